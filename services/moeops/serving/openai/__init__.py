"""The OpenAI-compatible HTTP API: `app` (the ASGI app and its lifespan), `routes` (endpoints and error handlers),
`state` (what routes share), `api_models` and `chat_models` (request and response bodies), `errors` (the
OpenAI-shaped refusals), `plans` (a validated request → what the engine runs), `generation` (a request's choices
through the engine), `completions`, `chat` and `responding` (the answers, JSON or server-sent events)."""
