"""The remote backend against a fake OpenAI-compatible server: requests, features and faults.

Expected feature values are computed here from the log-probabilities the fake server returns,
with the textbook formulas (not with knowgate's functions).
"""

from __future__ import annotations

import json
import math
import socket

import httpx
import numpy as np
import pytest

from knowgate.errors import (
    ConfigError,
    InputError,
    RemoteResponseError,
    RemoteUnavailableError,
    SignalError,
)
from knowgate.models import ModelConfig, RemoteModel, load_backend
from knowgate.models.config import DEFAULT_RAG_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPT
from knowgate.signals import TopKStats, feature_names, topk
from remote_helpers import BASE_URL, MODEL, FakeServer, completion, token

PARIS = [
    token("Paris", -0.1, [-2.5, -3.0]),
    token("\n", -0.05, [-4.0, -6.0]),
]


def entropy_of(logprobs: list[float]) -> float:
    weights = [math.exp(v) for v in logprobs]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights)


# ------------------------------------------------------------------------------ configuration
def test_source_string_and_config_section_name_the_same_model() -> None:
    by_source = ModelConfig(source=f"openai:{BASE_URL}#{MODEL}")
    by_section = ModelConfig(remote={"base_url": BASE_URL + "/", "model": MODEL})
    assert by_source.remote == by_section.remote
    assert by_section.source == f"openai:{BASE_URL}#{MODEL}"
    assert ModelConfig.model_validate(by_section.model_dump()).remote == by_section.remote
    model = load_backend(by_source)
    assert isinstance(model, RemoteModel) and model.model_id == f"openai:{BASE_URL}#{MODEL}"
    pinned = ModelConfig(remote={"base_url": BASE_URL, "model": MODEL, "model_id": "prod-llm"})
    assert RemoteModel(pinned).model_id == "prod-llm"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"source": "openai:http://host:1/v1"}, "openai:<base_url>#<model name>"),
        ({"source": "openai:ftp://host/v1#m"}, "must be an http"),
        (
            {"source": "gemma3-270m", "remote": {"base_url": BASE_URL, "model": "m"}},
            "is a local model",
        ),
        (
            {"source": f"openai:{BASE_URL}#a", "remote": {"base_url": BASE_URL, "model": "b"}},
            "different served models",
        ),
        (
            {"remote": {"base_url": BASE_URL, "model": "m", "extra_body": {"logprobs": False}}},
            "extra_body may not set",
        ),
    ],
)
def test_bad_remote_configs_are_refused(config, message) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.model_validate(config)


def test_few_shot_prompts_cannot_be_served() -> None:
    config = ModelConfig(source=f"openai:{BASE_URL}#{MODEL}", prompt={"style": "few_shot"})
    with pytest.raises(ConfigError, match="few_shot"):
        RemoteModel(config)


def test_api_key_comes_from_the_named_environment_variable(monkeypatch) -> None:
    server = FakeServer(default=completion("Paris", PARIS))
    monkeypatch.delenv("KG_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$KG_TEST_KEY, which is not set"):
        server.model(api_key_env="KG_TEST_KEY")
    monkeypatch.setenv("KG_TEST_KEY", "sk-secret")
    model = server.model(api_key_env="KG_TEST_KEY")
    model.draft(["What is the capital of France?"])
    assert server.requests[-1][3]["authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in str(model.identity())


# ------------------------------------------------------------------------------- the draft
def test_draft_request_is_one_greedy_call_with_logprobs_and_chat_messages() -> None:
    server = FakeServer(default=completion("Paris", PARIS))
    model = server.model(top_logprobs=7, extra_body={"repeat_penalty": 1.0})
    model.draft(["What is the  capital of France?"])
    (body,) = server.chat_bodies()
    assert body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert body["logprobs"] is True and body["top_logprobs"] == 7
    assert body["temperature"] == 0.0 and body["max_tokens"] == 16 and body["stop"] == ["\n"]
    assert body["model"] == MODEL and body["repeat_penalty"] == 1.0
    assert "return_hidden_states" not in body


def test_draft_features_from_the_returned_logprobs() -> None:
    tokens = [
        token("Le", -0.3, [-1.9, -2.2, -5.0]),
        token("on", -0.7, [-1.0, -3.0, -3.5]),
        token("\n", -0.01, [-5.0, -7.0, -9.0]),
    ]
    server = FakeServer(default=completion("Leon\n", tokens, prompt_tokens=41))
    draft = server.model(top_logprobs=4).draft(["Who painted the Mona Lisa?"])[0]
    assert draft.text == "Leon" and draft.stop_reason == "newline"
    assert draft.prompt_tokens == 41 and draft.missing_reason is None
    assert draft.tokens == ("Le", "on", "\n")
    f = draft.features
    # the newline token is the stop token: draft features read the two answer tokens
    assert f["draft_mean_logprob"] == pytest.approx((-0.3 - 0.7) / 2)
    assert f["draft_min_prob"] == pytest.approx(math.exp(-0.7))
    assert f["draft_mean_prob"] == pytest.approx((math.exp(-0.3) + math.exp(-0.7)) / 2)
    assert f["draft_perplexity"] == pytest.approx(math.exp(0.5))
    assert f["draft_mean_logit_margin"] == pytest.approx(((-0.3 + 1.9) + (-0.7 + 1.0)) / 2)
    assert f["draft_min_logit_margin"] == pytest.approx(-0.7 + 1.0)
    assert f["draft_mean_topk_entropy"] == pytest.approx(
        (entropy_of([-0.3, -1.9, -2.2, -5.0]) + entropy_of([-0.7, -1.0, -3.0, -3.5])) / 2
    )
    assert f["draft_max_topk_entropy"] == pytest.approx(entropy_of([-0.7, -1.0, -3.0, -3.5]))
    # the first position is the next-token distribution at the end of the prompt
    assert f["next_token_max_prob"] == pytest.approx(math.exp(-0.3))
    assert f["next_token_margin"] == pytest.approx(math.exp(-0.3) - math.exp(-1.9))
    assert f["next_token_logit_margin"] == pytest.approx(1.6)
    assert f["next_token_topk_entropy"] == pytest.approx(entropy_of([-0.3, -1.9, -2.2, -5.0]))
    # exactly the served features, none a server cannot give (full entropy, activations)
    assert set(f) == set(RemoteModel.feature_names(server.model()))
    assert "draft_mean_entropy" not in f and "hidden_hoyer_last" not in f


def test_topk_entropy_is_over_the_renormalised_top_k_only() -> None:
    # Top-2 of a distribution whose tail holds most of the mass: the top-k entropy sees two
    # equally likely tokens (log 2), whatever the tail's entropy is.
    stats = TopKStats.from_rows([math.log(0.2)], [[math.log(0.2), math.log(0.2)]])
    assert topk.first_topk_entropy(stats) == pytest.approx(math.log(2))
    padded = TopKStats.from_rows([-0.1], [[-0.1, -2.0]], k=5)
    assert padded.k == 5 and np.isneginf(padded.top_logprobs[0, 2:]).all()
    assert topk.first_topk_entropy(padded) == pytest.approx(entropy_of([-0.1, -2.0]))
    with pytest.raises(SignalError, match="at least two alternatives"):
        TopKStats.from_rows([-0.1], [[-0.1]])


def test_length_stop_and_empty_answers() -> None:
    server = FakeServer(
        replies={
            "long": completion("a b c", [token("a", -1.0, [-1.5])] * 3, finish_reason="length"),
            "blank": completion("", [token("\n", -0.2, [-2.0])]),
            "eos": completion("", []),
        }
    )
    model = server.model()
    long, blank, eos = model.draft(["long", "blank", "eos"])
    assert long.stop_reason == "length" and long.features["draft_mean_logprob"] == -1.0
    # an empty answer keeps its stop token's probabilities, as a local draft does
    assert blank.text == "" and blank.stop_reason == "newline"
    assert blank.features["draft_min_prob"] == pytest.approx(math.exp(-0.2))
    # no scored token at all: no features, and the draft says why
    assert eos.features == {} and "scored no token" in (eos.missing_reason or "")


def test_hidden_state_features_when_the_server_returns_one() -> None:
    server = FakeServer(
        replies={
            "one-hot": completion("x", PARIS, extra_choice={"hidden_states": [0.0, 0.0, 0.0, 4.0]}),
            "flat": completion("x", PARIS, extra_choice={"hidden_states": [[9.0], [1.0] * 4]}),
            "single": completion("x", PARIS, extra_choice={"hidden_states": []}),
        }
    )
    model = server.model(hidden_states=True)
    one_hot, flat, single = model.draft(["one-hot", "flat", "single"])
    assert server.chat_bodies()[0]["return_hidden_states"] is True
    # Hoyer is 1 for a one-hot vector and 0 for equal magnitudes; Gini (d-1)/d and 0
    assert one_hot.features["served_hidden_hoyer"] == pytest.approx(1.0)
    assert one_hot.features["served_hidden_gini"] == pytest.approx(0.75)
    assert one_hot.features["served_hidden_top1_energy"] == pytest.approx(1.0)
    assert flat.features["served_hidden_hoyer"] == pytest.approx(0.0)  # the last row is used
    assert flat.features["served_hidden_magnitude_evenness"] == pytest.approx(1.0)
    assert "served_hidden_hoyer" not in single.features
    assert single.missing_reason == "the server returned an empty hidden state"
    assert set(model.feature_names()) >= {"served_hidden_hoyer", "draft_min_prob"}


def test_missing_hidden_states_are_an_error_when_asked_for() -> None:
    server = FakeServer(default=completion("Paris", PARIS))
    with pytest.raises(RemoteResponseError, match="enable-return-hidden-states"):
        server.model(hidden_states=True).draft(["q"])


def test_concurrent_batch_keeps_question_order() -> None:
    questions = [f"question {i}" for i in range(12)]
    server = FakeServer(
        replies={
            q: completion(f"answer {i}", [token("a", -0.1 * (i + 1), [-5.0])])
            for i, q in enumerate(questions)
        }
    )
    drafts = server.model(concurrency=4).draft(questions)
    assert [d.text for d in drafts] == [f"answer {i}" for i in range(12)]
    assert [d.features["draft_mean_logprob"] for d in drafts] == pytest.approx(
        [-0.1 * (i + 1) for i in range(12)]
    )


def test_answer_with_passages_sends_the_rag_messages_without_logprobs() -> None:
    from knowgate.routing import PassageTrace

    server = FakeServer(default=completion("1985\nmore", None))
    passage = PassageTrace(
        id="p1", title="Skype", text="Skype   was founded in 2003.", score=1.0, rank=1
    )
    (answer,) = server.model().answer(["When was Skype founded?"], [[passage]])
    assert answer.text == "1985"
    (body,) = server.chat_bodies()
    assert "logprobs" not in body and "top_logprobs" not in body
    assert body["messages"][0] == {"role": "system", "content": DEFAULT_RAG_SYSTEM_PROMPT}
    assert body["messages"][1]["content"] == (
        "Context:\n[1] Skype: Skype was founded in 2003.\n\nQuestion: When was Skype founded?"
    )


def test_bad_questions_are_refused_before_any_request() -> None:
    server = FakeServer()
    model = server.model()
    for bad in ("a single string", [""], [3]):
        with pytest.raises(InputError):
            model.draft(bad)  # type: ignore[arg-type]
    assert server.requests == []


# ------------------------------------------------------------------------------ identity
def test_identity_reads_the_models_entry_and_refuses_an_unlisted_model() -> None:
    server = FakeServer(
        models=[{"id": MODEL, "created": 123, "root": "/ckpt/a", "max_model_len": 2048}]
    )
    identity = server.model(revision="sha256:abc").identity()
    assert identity["server_entry"] == {"id": MODEL, "root": "/ckpt/a", "max_model_len": 2048}
    assert identity["revision"] == "sha256:abc" and identity["top_logprobs"] == 20
    other = FakeServer(models=[{"id": MODEL, "created": 999, "root": "/ckpt/b"}]).model()
    assert other.identity()["server_entry_sha256"] != identity["server_entry_sha256"]
    missing = FakeServer(models=[{"id": "someone-else"}])
    with pytest.raises(RemoteResponseError, match="does not serve 'fake-model'"):
        missing.model().identity()


def test_identity_without_a_models_endpoint() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})

    model = RemoteModel(
        ModelConfig(remote={"base_url": BASE_URL, "model": MODEL}),
        transport=httpx.MockTransport(handler),
    )
    assert model.identity()["server_entry"] is None


# --------------------------------------------------------------------------------- faults
def test_no_logprobs_is_a_clear_error() -> None:
    server = FakeServer(default=completion("Paris", None))
    with pytest.raises(RemoteResponseError, match="returned no logprobs"):
        server.model().draft(["q"])


def test_too_few_top_logprobs_is_a_clear_error() -> None:
    bare = {"token": "Paris", "logprob": -0.1, "top_logprobs": []}
    server = FakeServer(default=completion("Paris", [bare]))
    with pytest.raises(RemoteResponseError, match="returned 0 top_logprobs"):
        server.model().draft(["q"])


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (httpx.Response(200, text="<html>gateway</html>"), "not JSON"),
        (httpx.Response(200, json={"id": "x"}), "no 'choices'"),
        (httpx.Response(200, json={"choices": ["text"]}), r"choices\[0\] should be Mapping"),
        (
            completion("x", [{"token": "x", "logprob": "high", "top_logprobs": []}]),
            r"content\[0\].logprob should be int or float",
        ),
        (
            completion("x", [{"token": "x", "logprob": -1.0, "top_logprobs": "many"}]),
            r"content\[0\].top_logprobs should be list",
        ),
        (
            httpx.Response(200, text=json.dumps(completion("x", [token("x", math.nan, [-1.0])]))),
            "is NaN",
        ),
    ],
)
def test_malformed_responses_name_what_is_wrong(reply, message) -> None:
    server = FakeServer(default=reply)
    with pytest.raises(RemoteResponseError, match=message):
        server.model().draft(["q"])
    assert len(server.chat_bodies()) == 1  # never retried


def test_rate_limit_is_retried_after_the_servers_retry_after() -> None:
    limited = httpx.Response(
        429, headers={"Retry-After": "1.5"}, json={"error": {"message": "slow down"}}
    )
    server = FakeServer(replies={"q": [limited, limited, completion("Paris", PARIS)]})
    draft = server.model(max_retries=3).draft(["q"])[0]
    assert draft.text == "Paris" and draft.retries == 2
    assert server.sleeps == [1.5, 1.5]


def test_rate_limit_gives_up_after_max_retries_with_backoff() -> None:
    limited = httpx.Response(429, json={"error": {"message": "quota exceeded"}})
    server = FakeServer(default=limited)
    with pytest.raises(
        RemoteUnavailableError, match=r"rate limited \(429\): quota exceeded.*3 retries"
    ):
        server.model(max_retries=3, backoff_s=0.25, max_backoff_s=4.0).draft(["q"])
    assert len(server.chat_bodies()) == 4
    assert len(server.sleeps) == 3 and all(0 < s <= 4.0 for s in server.sleeps)


def test_timeouts_are_not_retried() -> None:
    server = FakeServer(default=httpx.ReadTimeout("read timed out"))
    with pytest.raises(RemoteUnavailableError, match=r"no response .* within 2 s.*not retried"):
        server.model(timeout_s=2.0).draft(["q"])
    assert len(server.chat_bodies()) == 1


def test_server_errors_are_reported_with_the_servers_message() -> None:
    cases = {
        "boom": (
            httpx.Response(500, json={"detail": "CUDA out of memory"}),
            RemoteUnavailableError,
            "CUDA out of memory",
        ),
        "key": (
            httpx.Response(401, json={"error": {"message": "bad key"}}),
            RemoteResponseError,
            "api_key_env",
        ),
        "cap": (
            httpx.Response(400, json={"error": {"message": "top_logprobs must be <= 5"}}),
            RemoteResponseError,
            "lower model.remote.top_logprobs",
        ),
        "down": (
            httpx.Response(503, text="overloaded"),
            RemoteUnavailableError,
            r"unavailable \(503\)",
        ),
    }
    for question, (reply, error, message) in cases.items():
        server = FakeServer(default=reply)
        with pytest.raises(error, match=message):
            server.model(max_retries=1).draft([question])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_is_retried_then_reported() -> None:
    port = _free_port()  # nothing listens here
    model = RemoteModel(
        ModelConfig(
            remote={
                "base_url": f"http://127.0.0.1:{port}/v1",
                "model": "m",
                "max_retries": 2,
                "backoff_s": 0.0,
            }
        )
    )
    sleeps: list[float] = []
    model._sleep = sleeps.append  # type: ignore[method-assign]
    with pytest.raises(RemoteUnavailableError, match=r"cannot connect .*127\.0\.0\.1.*2 retries"):
        model.draft(["q"])
    assert len(sleeps) == 2


def test_features_the_served_model_provides_are_registered_for_it() -> None:
    served = set(feature_names(backend="served"))
    local = set(feature_names())
    assert {"draft_mean_topk_entropy", "next_token_topk_entropy"} <= served - local
    assert {"draft_min_prob", "next_token_margin", "draft_min_logit_margin"} <= served & local
    assert {"draft_mean_entropy", "next_token_entropy", "hidden_hoyer_last"} <= local - served
