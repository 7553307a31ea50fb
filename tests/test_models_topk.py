"""A local model's top-k log-probabilities give the served features (slow: the real model).

Teacher forcing the draft in one pass must reproduce what the incremental decode (with its KV
cache) recorded: the features that read only the chosen token and the top two are the same
quantity on both paths.
"""

from __future__ import annotations

import numpy as np
import pytest

from knowgate.errors import InputError
from knowgate.signals import compute_features, compute_served_features

pytestmark = pytest.mark.slow
SAME_QUANTITY = (
    "next_token_max_prob",
    "next_token_margin",
    "next_token_logit_margin",
    "draft_min_prob",
    "draft_mean_logprob",
    "draft_min_logit_margin",
)


@pytest.mark.parametrize("question", ["What is the capital of France?", "Who wrote Dracula?"])
def test_topk_logprobs_along_the_draft_give_the_runners_features(smollm, question) -> None:
    prompt = smollm.format_prompt(question)
    run = smollm.run([prompt])[0]
    ids = run.draft.token_ids
    keep = max(len(ids) - (run.draft.stop_reason != "length"), 1)
    stats = smollm.topk_logprobs(prompt, ids[:keep], k=20)
    assert len(stats) == keep and stats.k == 20
    # greedy: the chosen token is the most likely one at every position
    np.testing.assert_allclose(stats.logprob, stats.top_logprobs[:, 0], atol=1e-5)
    served = compute_served_features(stats)
    local = compute_features(run.capture)
    for name in SAME_QUANTITY:
        assert served[name] == pytest.approx(local[name], abs=2e-4), name
    # the renormalised top-k entropy is bounded by log k (the full entropy is not)
    assert 0 <= served["draft_max_topk_entropy"] <= np.log(20) + 1e-9


def test_topk_logprobs_refuses_bad_arguments(smollm) -> None:
    prompt = smollm.format_prompt("Who wrote Hamlet?")
    with pytest.raises(InputError, match="at least one"):
        smollm.topk_logprobs(prompt, [])
    with pytest.raises(InputError, match="k must be at least 2"):
        smollm.topk_logprobs(prompt, [1], k=1)
