"""Token streaming from the decode loop: the ``on_token`` hook and ``AnswerStream``."""

from __future__ import annotations

from knowgate.models import AnswerStream

PROMPTS = ["What is the capital of France?", "Who wrote Hamlet?", "Name a primary colour."]


def collect(calls: list[tuple[int, int]], rows: int) -> list[list[int]]:
    per_row: list[list[int]] = [[] for _ in range(rows)]
    for row, token in calls:
        per_row[row].append(token)
    return per_row


def test_decode_hands_out_every_generated_token_of_the_selected_rows(smollm) -> None:
    pre = smollm.prefill([smollm.format_prompt(p) for p in PROMPTS])
    calls: list[tuple[int, int]] = []
    drafts = smollm.decode(pre, rows=[2, 0], on_token=lambda r, t: calls.append((r, t)))
    # rows count in the order of `rows`; each row's tokens end with its stop token
    assert collect(calls, 2) == [d.token_ids for d in drafts]
    assert all(len(d.token_ids) >= 1 for d in drafts)


def test_run_numbers_rows_by_prompt_across_its_chunks(smollm) -> None:
    calls: list[tuple[int, int]] = []
    prompts = [smollm.format_prompt(p) for p in PROMPTS]
    outs = smollm.run(prompts, batch_size=2, on_token=lambda r, t: calls.append((r, t)))
    assert collect(calls, 3) == [o.draft.token_ids for o in outs]
    plain = smollm.run(prompts, batch_size=2)
    assert [o.answer for o in outs] == [o.answer for o in plain]  # the hook changes nothing


def test_answer_stream_rebuilds_each_drafts_text_as_growing_prefixes(smollm) -> None:
    for out in smollm.run([smollm.format_prompt(p) for p in PROMPTS]):
        pieces: list[str] = []
        stream = AnswerStream.for_model(smollm, pieces.append)
        for token in out.draft.token_ids:
            stream.push(token)
            assert out.answer.startswith("".join(pieces))
        assert "".join(pieces) == out.answer
        assert all(pieces)  # never an empty piece


def test_answer_stream_holds_back_split_characters_and_trailing_space(smollm) -> None:
    tok = smollm.tokenizer
    # Multi-byte characters split over byte-level tokens decode to U+FFFD until complete.
    ids = tok("  Hello wörld, 日本 — ok  \nnever shown", add_special_tokens=False).input_ids
    pieces: list[str] = []
    stream = AnswerStream.for_model(smollm, pieces.append)
    for token in ids:
        stream.push(token)
        assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == "Hello wörld, 日本 — ok"
    assert stream.finished  # the newline ends the answer
    # Trailing spaces wait for more text; an end-of-sequence token ends the answer without them.
    pieces.clear()
    stream = AnswerStream.for_model(smollm, pieces.append)
    for token in [*tok("Paris is big   ", add_special_tokens=False).input_ids, tok.eos_token_id]:
        stream.push(token)
    assert "".join(pieces) == "Paris is big" and stream.finished
    stream.push(tok("more", add_special_tokens=False).input_ids[0])
    assert "".join(pieces) == "Paris is big"  # nothing after the stop token
