"""Teacher and student must read text as the same token ids: the KD term compares their distributions id
by id, so a different vocabulary makes the loss meaningless while training runs on without complaint."""

from __future__ import annotations

from llmtune.errors import LlmtuneError

PROBE = "The quick brown fox jumps over the lazy dog. 1234567890 <|im_start|>user\nHello!<|im_end|>\n"


def check_same_tokenizer(student, teacher, *, student_name: str, teacher_name: str, text: str = "") -> None:
    """Raise (exit 2) unless the two tokenizers have the same vocabulary (same token at every id) and encode
    `text` (a sample of the training data) and a fixed probe to the same ids; the message names the first
    id or position where they differ."""
    student_vocab = {i: t for t, i in student.get_vocab().items()}
    teacher_vocab = {i: t for t, i in teacher.get_vocab().items()}
    for token_id in range(max(len(student_vocab), len(teacher_vocab))):
        mine, theirs = student_vocab.get(token_id), teacher_vocab.get(token_id)
        if mine != theirs:
            raise LlmtuneError(
                f"the student ({student_name}) and the teacher ({teacher_name}) have different tokenizers: "
                f"id {token_id} is {_show(mine)} in the student's and {_show(theirs)} in the teacher's "
                f"(vocabularies of {len(student_vocab)} and {len(teacher_vocab)} tokens). Distillation "
                "compares the two models' predictions token id by token id, so they must share one tokenizer.",
                hint="Use a student from the teacher's family (same tokenizer), or prune the teacher "
                "(llmtune prune) to make one.",
            )
    for sample in (PROBE, text[:2000]):
        if not sample:
            continue
        mine = student(sample, add_special_tokens=False)["input_ids"]
        theirs = teacher(sample, add_special_tokens=False)["input_ids"]
        if mine != theirs:
            at = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), None)
            at = min(len(mine), len(theirs)) if at is None else at
            raise LlmtuneError(
                f"the student ({student_name}) and the teacher ({teacher_name}) share a vocabulary but "
                f"tokenise text differently: at token {at} of {sample[:40]!r}... the student has "
                f"{mine[at : at + 5]} and the teacher {theirs[at : at + 5]} (different normalisation or "
                "pre-tokenisation rules).",
                hint="Use the teacher's tokenizer for the student (model.tokenizer: <the teacher's folder>).",
            )


def _show(token) -> str:
    return "missing" if token is None else repr(token)
