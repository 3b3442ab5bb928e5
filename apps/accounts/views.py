from django.contrib import messages
from django.utils.translation import gettext
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.models import APIToken


def tokens(request):
    new_token = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100]
        if not name:
            messages.error(request, gettext("Give the token a name, e.g. the machine or script that will use it."))
        else:
            token, new_token = APIToken.issue(request.user, name)
            messages.success(request, gettext('Token “%(name)s” created. Copy it now: it is not shown again.') % {"name": token.name})
    return render(request, "accounts/tokens.html", {"tokens": APIToken.objects.filter(user=request.user), "new_token": new_token})


@require_POST
def revoke_token(request, token_id: int):
    token = get_object_or_404(APIToken, pk=token_id, user=request.user)
    token.revoke()
    messages.info(request, gettext('Token “%(name)s” revoked.') % {"name": token.name})
    return redirect("tokens")
