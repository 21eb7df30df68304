"""``fleet console``: the ops web app (docs/console.md), one aiohttp process, server-rendered.

    app       the aiohttp application: routes, page handlers, error pages and the outage banner
    security  who the operator is (local, bearer token, basic auth, a trusted SSO proxy's header) and
              the CSRF rule every POST passes (a per-session token plus an Origin/Referer check)
    fleet     what the fleet page reads: consumer groups, members, lag per partition, health, breakers
    jobs      replay jobs the console runs in the background, with their progress

Every write calls the same functions as the CLI (``workers.dlq.replay``, ``workers.dlq.purge``,
``workers.fulfillment.retry``) and is audited with the operator's name. Must not hold the logic of
those writes, nor read the environment (its settings arrive as ``Settings.console``).
"""
