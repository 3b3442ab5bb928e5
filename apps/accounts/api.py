"""API authentication (bearer tokens or the browser session) and the token endpoints."""
from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status
from ninja.security import HttpBearer
from ninja.security import SessionAuth as NinjaSessionAuth

from apps.accounts.models import APIToken


class TokenAuth(HttpBearer):
    """`Authorization: Bearer puyu_…` — a per-user token created on the API tokens page."""

    def authenticate(self, request, token):
        user = APIToken.authenticate(token)
        if user is not None:
            request.user = user
        return user


class SessionAuth(NinjaSessionAuth):
    """The browser session. ninja checks CSRF before it looks at the user, so an anonymous POST got
    403 "CSRF check failed" and a client could not tell "sign in" from "forged": without a signed-in
    session there is nothing to forge, so answer 401 like any missing credential."""

    def _get_key(self, request):
        if not request.user.is_authenticated:
            return None
        return super()._get_key(request)


# Session auth checks CSRF on unsafe methods for signed-in users; bearer-token requests carry no
# cookie to forge.
API_AUTH = [TokenAuth(), SessionAuth()]

router = Router(tags=["accounts"])


class MeOut(Schema):
    id: int
    username: str
    is_staff: bool
    teams: list[str]


class TokenIn(Schema):
    name: str


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str  # shown once; only its hash is stored


@router.get("/me", response=MeOut)
def me(request):
    user = request.auth
    return {"id": user.pk, "username": user.username, "is_staff": user.is_staff,
            "teams": sorted(user.groups.values_list("name", flat=True))}


@router.get("/tokens", response=list[TokenOut])
def list_tokens(request):
    return list(APIToken.objects.filter(user=request.auth))


@router.post("/tokens", response={201: TokenCreatedOut})
def create_token(request, payload: TokenIn):
    name = payload.name.strip()[:100] or "unnamed"
    token, raw = APIToken.issue(request.auth, name)
    return Status(201, {**TokenOut.from_orm(token).model_dump(), "token": raw})


@router.delete("/tokens/{token_id}", response={204: None})
def revoke_token(request, token_id: int):
    get_object_or_404(APIToken, pk=token_id, user=request.auth).revoke()
    return Status(204, None)
