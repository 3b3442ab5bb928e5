"""The built-ins (owned by the system user) are read-only for every signed-in user: owner-less
objects anyone may open and no one but staff may change; a person's account that happens to carry
the system's name gets no such reach."""
import pytest
from django.contrib.auth.models import User

from apps.accounts.system import SYSTEM_USERNAME, system_user
from apps.accounts.visibility import can_manage, visible_to
from apps.registry.models import RegisteredModel
from tests.conftest import login_client

pytestmark = pytest.mark.django_db


def test_every_signed_in_user_sees_a_builtin_model_and_only_staff_may_change_it(client, users):
    builtin = RegisteredModel.objects.create(owner=system_user(), name="smollm2-starter")
    private = RegisteredModel.objects.create(owner=users["owner"], name="mine")
    for name in ("owner", "teammate", "outsider"):
        seen = set(visible_to(RegisteredModel.objects.all(), users[name]).values_list("name", flat=True))
        assert "smollm2-starter" in seen and ("mine" in seen) == (name != "outsider")
        assert not can_manage(users[name], builtin)
        login_client(client, users[name])
        assert client.get(f"/models/{builtin.pk}/").status_code == 200
        assert client.get(f"/models/{private.pk}/").status_code == (404 if name == "outsider" else 200)
    staff = User.objects.create_user("staffer", is_staff=True)
    assert can_manage(staff, builtin)


def test_an_active_account_named_like_the_system_owns_nothing_builtin(users):
    impostor = User.objects.create_user(SYSTEM_USERNAME, password="x" * 12)
    theirs = RegisteredModel.objects.create(owner=impostor, name="lookalike")
    assert theirs not in visible_to(RegisteredModel.objects.all(), users["outsider"])
    with pytest.raises(RuntimeError, match="can sign in"):
        system_user()
