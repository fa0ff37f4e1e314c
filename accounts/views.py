"""Dashboard pages for personal access tokens: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.forms import TokenCreateForm
from accounts.http import AuthenticatedHttpRequest

# The new secret waits in the session for the one page that shows it (post,
# redirect, get: reloading that page neither creates a second token nor shows it again).
SESSION_NEW = "accounts.new_token"


@never_cache  # the page that shows a new secret must not be kept by any cache
@login_required
def token_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = TokenCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        token, secret = services.token_create(
            actor=request.user,
            user=request.user,
            name=form.cleaned_data["name"],
            expires_at=form.expires_at(),
            scopes_wanted=form.cleaned_data["scopes"],
        )
        request.session[SESSION_NEW] = {"name": token.name, "secret": secret}
        return redirect("tokens")
    context = {
        "form": form,
        "new_token": request.session.pop(SESSION_NEW, None),
        "tokens": selectors.token_list(user=request.user),
    }
    return render(request, "accounts/tokens.html", context)


@login_required
@require_POST
def token_revoke(request: AuthenticatedHttpRequest, token_id: int) -> HttpResponse:
    token = selectors.token_get(user=request.user, token_id=token_id)
    services.token_revoke(actor=request.user, token=token)
    messages.success(request, f'Token "{token.name}" revoked: it no longer works.')
    return redirect("tokens")
