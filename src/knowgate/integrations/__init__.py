"""Adapters to other libraries' interfaces, each over a :class:`~knowgate.routing.QueryRouter`.

- :mod:`knowgate.integrations.langchain`: LangChain (routing runnable, gated retriever,
  knowledge-base retriever, passage source, answer generator, local chat model).
- :mod:`knowgate.integrations.serving`: the HTTP app (FastAPI) behind ``knowgate serve``:
  knowgate's JSON API and an OpenAI-compatible one, micro-batched, with Prometheus metrics.

Each module (or subpackage) imports its library on import; this package imports none of them.
"""
