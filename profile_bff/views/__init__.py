"""The BFF's REST views: thin HTTP handlers over its use cases, one module per resource.

- :mod:`~profile_bff.views.accounts`: ``/v1/register``, ``/v1/login``, ``/v1/refresh``, ``/v1/logout``,
  ``/v1/password`` over :class:`profile_bff.accounts.Accounts` and the auth client, and the session cookies;
- :mod:`~profile_bff.views.portfolios`: ``/v2/coin/...``, ``/v2/user/profile``, ``/v2/user/history`` over
  :class:`profile_bff.portfolios.Portfolios`, with ``Idempotency-Key``;
- :mod:`~profile_bff.views.public`: the routes that need no credentials (``/v1/instruments``,
  ``/openapi.json``, ``/healthz``);
- :mod:`~profile_bff.views.requests`: reading bodies and query parameters, proving the caller, answering JSON;
- :mod:`~profile_bff.views.errors`: every domain error of :mod:`profile_bff.errors` and its HTTP answer.

A view reads the request, calls one use case, and writes the answer; the errors it does not raise itself
(``ApiError`` for a malformed request) are answered by the error layer.
"""
