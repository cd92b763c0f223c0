"""Multiple-choice benchmarks (MMLU, CMMLU, C-Eval layouts) scored by log-likelihood, as their own harnesses
do.

Prompts follow the original harnesses word for word:
- MMLU: hendrycks/test `evaluate.py` (`gen_prompt` + `format_example`): "The following are multiple choice
  questions (with answers) about{ subject words}.\\n\\n", each question as "Q\\nA. a\\nB. b\\nC. c\\nD. d\\n
  Answer:" and, for the k shots, " X\\n\\n" after it. (Its `format_subject` puts a space before every
  word, so the header has two spaces after "about"; kept, because scores are comparable only on the
  same prompt.)
- CMMLU: haonan-li/CMMLU `src/mp_utils.py`: "以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n\\n",
  "题目：Q\\nA. a\\n...\\n答案是：" and "X\\n\\n" for shots.
- C-Eval: hkust-nlp/ceval `code/evaluator_series/evaluators/llama.py` (`generate_few_shot_prompt` +
  `format_example`, answer-only): "以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n", each
  question as "Q\\nA. a\\nB. b\\nC. c\\nD. d\\n答案：" (the question not stripped) and "X\\n\\n" for shots; its
  evaluator then compares the logits of the tokens "A".."D" after the prompt. {科目} is the Chinese subject
  name, as in the prompt the C-Eval README gives and in lm-evaluation-harness's ceval-valid tasks (whose
  `description`s CEVAL_SUBJECTS is copied from; eval.py itself passes the file's English subject name,
  "accountant", into that header). lm-eval's own ceval-valid differs: it strips the question, drops
  "考试" from the header and scores " A" (target_delimiter " ") after "答案：".
The predicted answer is the letter whose token has the highest log-probability after the prompt
(" A" after "Answer:", "A" after "答案是：" and "答案："). With `score: text` (or both) each option's full text is
scored as the continuation instead: summed log-likelihood (acc_text) and per character (acc_text_norm, as
lm-evaluation-harness's acc_norm).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.data.sources import BadRows, brief, read_text_file, report_bad_row
from llmtune.errors import LlmtuneError

LETTERS = "ABCD"
KEY = "mcq.on_bad_rows"  # the recipe key that turns bad rows into counted skips
# CMMLU's name_en2zh for the subjects shipped with the shared data; other subjects fall back to the
# English words.
CMMLU_SUBJECTS = {
    "anatomy": "解剖学",
    "clinical_knowledge": "临床知识",
    "college_medicine": "大学医学",
    "computer_science": "计算机科学",
    "high_school_mathematics": "高中数学",
    "machine_learning": "机器学习",
    "college_computer_science": "大学计算机科学",
    "college_mathematics": "大学数学",
    "professional_medicine": "专业医学",
}
# C-Eval's 52 subjects (files <subject>_val.csv, _dev.csv, _test.csv) → the Chinese name in its prompt
# header, from the descriptions of lm-evaluation-harness's ceval-valid tasks (the same names as C-Eval's
# subject_mapping.json).
CEVAL_SUBJECTS = {
    "accountant": "注册会计师",
    "advanced_mathematics": "高等数学",
    "art_studies": "艺术学",
    "basic_medicine": "基础医学",
    "business_administration": "工商管理",
    "chinese_language_and_literature": "中国语言文学",
    "civil_servant": "公务员",
    "clinical_medicine": "临床医学",
    "college_chemistry": "大学化学",
    "college_economics": "大学经济学",
    "college_physics": "大学物理",
    "college_programming": "大学编程",
    "computer_architecture": "计算机组成",
    "computer_network": "计算机网络",
    "discrete_mathematics": "离散数学",
    "education_science": "教育学",
    "electrical_engineer": "注册电气工程师",
    "environmental_impact_assessment_engineer": "环境影响评价工程师",
    "fire_engineer": "注册消防工程师",
    "high_school_biology": "高中生物",
    "high_school_chemistry": "高中化学",
    "high_school_chinese": "高中语文",
    "high_school_geography": "高中地理",
    "high_school_history": "高中历史",
    "high_school_mathematics": "高中数学",
    "high_school_physics": "高中物理",
    "high_school_politics": "高中政治",
    "ideological_and_moral_cultivation": "思想道德修养与法律基础",
    "law": "法学",
    "legal_professional": "法律职业资格",
    "logic": "逻辑学",
    "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论",
    "marxism": "马克思主义基本原理",
    "metrology_engineer": "注册计量师",
    "middle_school_biology": "初中生物",
    "middle_school_chemistry": "初中化学",
    "middle_school_geography": "初中地理",
    "middle_school_history": "初中历史",
    "middle_school_mathematics": "初中数学",
    "middle_school_physics": "初中物理",
    "middle_school_politics": "初中政治",
    "modern_chinese_history": "近代史纲要",
    "operating_system": "操作系统",
    "physician": "医师资格",
    "plant_protection": "植物保护",
    "probability_and_statistics": "概率统计",
    "professional_tour_guide": "导游资格",
    "sports_science": "体育学",
    "tax_accountant": "税务师",
    "teacher_qualification": "教师资格",
    "urban_and_rural_planner": "注册城乡规划师",
    "veterinary_medicine": "兽医学",
}


@dataclass
class Question:
    subject: str
    question: str
    options: list[str]
    answer: int  # 0-3
    where: str


@dataclass
class QuestionFile:
    path: Path
    layout: str  # mmlu | mmlu_columns | mmlu_original | cmmlu | ceval
    subject: str
    questions: list[Question] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading
def subject_of(path: Path) -> str:
    return re.sub(r"_(dev|test|val)$", "", path.stem)


def detect_layout(header: list[str]) -> str:
    """The layout a CSV file's first row announces; a row that is no known header is taken for a question
    (hendrycks' files have no header)."""
    names = [h.strip() for h in header]
    if names[1:7] == ["Question", "A", "B", "C", "D", "Answer"]:
        return "cmmlu"
    # C-Eval: id,question,A,B,C,D,answer (+ explanation in dev/val); the test split stops after D.
    if [n.lower() for n in names[:6]] == ["id", "question", "a", "b", "c", "d"]:
        return "ceval"
    if [n.lower() for n in names[:6]] == ["question", "choice0", "choice1", "choice2", "choice3", "answer"]:
        return "mmlu"
    if [n.lower() for n in names[:6]] == ["question", "a", "b", "c", "d", "answer"]:
        return "mmlu_columns"
    return "mmlu_original"


def read_questions(path: Path, layout: str, on_bad_rows: str, bad: BadRows) -> QuestionFile:
    """Questions of one CSV file. Layouts: mmlu (header question,choice0..3,answer 0-3 or A-D), mmlu_columns
    (header question,A,B,C,D,answer), mmlu_original (hendrycks: no header, question,A,B,C,D,letter), cmmlu
    (,Question,A,B,C,D,Answer), ceval (id,question,A,B,C,D,answer[,explanation]). `layout` other than auto
    must agree with the header."""
    text = read_text_file(path)  # a leading BOM is dropped there
    # io.StringIO splits lines on "\n" only (newline="\n"), so U+2028 and friends stay inside a cell.
    reader = csv.reader(io.StringIO(text))
    try:
        rows = list(reader)
    except csv.Error as exc:  # e.g. a cell over csv's 128 KB field limit, a stray quote in strict mode
        raise LlmtuneError(
            f"{path} line {reader.line_num}: not valid CSV ({exc}).",
            hint="Fix the line (a question cell is never that long; a quote may be unclosed).",
        ) from None
    if not rows:
        raise LlmtuneError(f"{path} is empty: no header and no questions.")
    found = detect_layout(rows[0])
    if layout != "auto" and _reading(layout) != _reading(found):
        # Reading a file in another layout shifts its columns or takes its header for a question (or a
        # question for the header): every answer would be read from the wrong cell.
        first = brief(",".join(rows[0][:8]), 80)
        raise LlmtuneError(
            f"mcq.layout {layout}: {path} starts with {first}, which is the {_LAYOUT_HEADERS[found]}: "
            f"layout {found}.",
            hint=f"Set mcq.layout to {found} or auto (detected per file), or give a {layout} file.",
        )
    layout = found
    if layout == "ceval" and [n.strip().lower() for n in rows[0][6:7]] != ["answer"]:
        raise LlmtuneError(
            f"{path} is a C-Eval file without an answer column (header {brief(','.join(rows[0]), 80)}): "
            "C-Eval's test split has no answers (they are kept for its leaderboard), so it cannot be scored "
            "here.",
            hint="Evaluate on the val split (<subject>_val.csv), with the dev split (<subject>_dev.csv) as "
            "mcq.shots_files.",
        )
    has_header = layout != "mmlu_original"
    offset = 1 if layout in ("cmmlu", "ceval") else 0  # CMMLU's row index, C-Eval's id
    out = QuestionFile(path, layout, subject_of(path))
    for number, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        where = f"{path} line {number}"  # CSV record number (a quoted field may span lines)
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < offset + 6:
            report_bad_row(where, f"expected {offset + 6} columns, found {len(row)}", on_bad_rows, bad, KEY)
            continue
        question, *options, answer = row[offset : offset + 6]
        answer = answer.strip()
        # Exactly one label: `answer in LETTERS` alone is a substring test, and "AB" or "BCD" would be
        # scored as their first letter.
        if len(answer) == 1 and answer in LETTERS:
            index = LETTERS.index(answer)
        elif answer in ("0", "1", "2", "3"):
            index = int(answer)
        else:
            report_bad_row(
                where, f"answer {brief(answer, 20)} is not one of A-D or 0-3", on_bad_rows, bad, KEY
            )
            continue
        if not question.strip():
            report_bad_row(where, "empty question", on_bad_rows, bad, KEY)
            continue
        out.questions.append(Question(out.subject, question, options, index, where))
    return out


# What each layout's first row is, for messages.
_LAYOUT_HEADERS = {
    "mmlu": "header question,choice0,choice1,choice2,choice3,answer",
    "mmlu_columns": "header question,A,B,C,D,answer",
    "mmlu_original": "first question of a headerless hendrycks file (no known header)",
    "cmmlu": "CMMLU header ,Question,A,B,C,D,Answer",
    "ceval": "C-Eval header id,question,A,B,C,D,answer",
}


def _reading(layout: str) -> str:
    """Layouts read the same way (a header row, the same six columns, the same prompt) count as one: a
    recipe that says mmlu for a question,A,B,C,D,answer file (mmlu_columns) is not wrong."""
    return "mmlu" if layout == "mmlu_columns" else layout


# ------------------------------------------------------------------------------------------ prompts
def header(layout: str, subject: str) -> str:
    if layout == "cmmlu":
        name = CMMLU_SUBJECTS.get(subject, subject.replace("_", " "))
        return f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"
    if layout == "ceval":
        name = CEVAL_SUBJECTS.get(subject, subject.replace("_", " "))
        return f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n"
    words = "".join(" " + word for word in subject.split("_"))  # hendrycks format_subject
    return f"The following are multiple choice questions (with answers) about {words}.\n\n"


def format_question(layout: str, q: Question, with_answer: bool) -> str:
    if layout == "cmmlu":
        text = "题目：" + q.question
        text += "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(q.options))
        text += "\n答案是："
        return text + (f"{LETTERS[q.answer]}\n\n" if with_answer else "")
    if layout == "ceval":
        text = q.question + "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(q.options))
        return text + "\n答案：" + (f"{LETTERS[q.answer]}\n\n" if with_answer else "")
    text = q.question + "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(q.options))
    text += "\nAnswer:"
    return text + (f" {LETTERS[q.answer]}\n\n" if with_answer else "")


def answer_prefix(layout: str) -> str:
    """What comes between the prompt and the letter: MMLU's " A", CMMLU's and C-Eval's "A"."""
    return "" if layout in ("cmmlu", "ceval") else " "


def build_prompt(layout: str, q: Question, shots: list[Question]) -> str:
    return (
        header(layout, q.subject)
        + "".join(format_question(layout, s, True) for s in shots)
        + format_question(layout, q, False)
    )


# ------------------------------------------------------------------------------------------ scoring
def encode_pairs(
    tokenizer, pairs: list[tuple[str, str]], *, add_special_tokens: bool = True
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per (context, continuation).

    The pair is tokenised whole and split where the context's own tokens end (so " A" joins the context's
    last token exactly as it would in running text); when the tokeniser merges across that boundary, the
    continuation is tokenised on its own and appended. Either way the scored sequence is the context's own
    tokens followed by the continuation's, which is what lets every option share one encoding of the
    context.
    """
    own: dict[str, list[int]] = {}  # a question's eight pairs share one context: tokenise it once
    encoded = []
    for context, continuation in pairs:
        if context not in own:
            own[context] = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
        context_ids = own[context]
        whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
        if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
            continuation_ids = whole[len(context_ids) :]
        else:
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        encoded.append((context_ids, continuation_ids))
    return encoded


def continuation_log_likelihoods(
    model, tokenizer, pairs: list[tuple[str, str]], *, batch_size: int, add_special_tokens: bool = True
) -> list[float]:
    """log p(continuation | context) for each (context, continuation), summed over its tokens.

    Each distinct context is run through the model once. Contexts whose continuations are all one token
    long (answer letters) need only the context's last logits, so `batch_size` of them share a forward.
    A context with longer continuations (option texts) is run alone with the key/value cache kept, and its
    continuations are then scored together against that cache: the long prompt is encoded once rather
    than once per option, as a forward over prompt + option per option would.
    """
    encoded = encode_pairs(tokenizer, pairs, add_special_tokens=add_special_tokens)
    if _has_virtual_tokens(model):
        return [_score_alone(model, context, continuation) for context, continuation in encoded]
    by_context: dict[tuple, list[int]] = {}  # context ids -> indices of its pairs, in order
    for index, (context_ids, _) in enumerate(encoded):
        by_context.setdefault(tuple(context_ids), []).append(index)
    scores = [0.0] * len(pairs)  # an empty continuation has log-likelihood 0
    short, long = [], []
    for context, indices in by_context.items():
        (long if any(len(encoded[i][1]) > 1 for i in indices) else short).append(context)

    short.sort(key=len, reverse=True)  # similar lengths share a batch: less padding
    for start in range(0, len(short), batch_size):
        chunk = short[start : start + batch_size]
        last = _last_log_probs(model, [list(c) for c in chunk], _pad_id(tokenizer))
        for row, context in enumerate(chunk):
            for i in by_context[context]:
                if encoded[i][1]:
                    scores[i] = float(last[row, encoded[i][1][0]])

    for context in long:
        indices = by_context[context]
        found = _score_with_cache(
            model, list(context), [encoded[i][1] for i in indices], _pad_id(tokenizer), batch_size
        )
        for i, value in zip(indices, found, strict=True):
            scores[i] = value
    return scores


def _has_virtual_tokens(model) -> bool:
    """A prompt, prefix or P-tuning adapter puts virtual tokens before the input: position ids and a
    cache passed from outside would not line up with them (PEFT drops the position ids)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _score_alone(model, context: list[int], continuation: list[int]) -> float:
    """Summed log-likelihood of one continuation from one unpadded forward over context + continuation."""
    import torch

    if not continuation:
        return 0.0
    device = next(model.parameters()).device
    logits = _forward(model, input_ids=torch.tensor([context + continuation], device=device)).logits
    # counted from the end: a prompt-tuning adapter's virtual tokens come first in the logits
    table = torch.log_softmax(logits[0, -len(continuation) - 1 : -1].float(), dim=-1)
    return sum(float(table[i, token]) for i, token in enumerate(continuation))


def _pad_id(tokenizer) -> int:
    # Any id will do: padded positions are masked and never read.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _forward(model, **inputs):
    """model(**inputs) under no_grad, asking for the last position's logits only when the model can (a
    vocabulary-wide row per position is most of the memory, and its projection a fifth of the time, for a
    small model with a large vocabulary)."""
    import inspect

    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper
    if inputs.pop("last_only", False) and "logits_to_keep" in inspect.signature(inner.forward).parameters:
        inputs["logits_to_keep"] = 1
    with torch.no_grad():
        return model(**inputs)


def _last_log_probs(model, contexts: list[list[int]], pad: int):
    """log p(next token | context) for each context: [contexts, vocabulary], one forward.

    Left padding puts every context's last token in the last column; position ids count real tokens
    only, so a padded row sees the same positions as the context alone."""
    import torch

    width = max(len(c) for c in contexts)
    input_ids = torch.full((len(contexts), width), pad, dtype=torch.long)
    attention = torch.zeros(len(contexts), width, dtype=torch.long)
    for row, context in enumerate(contexts):
        input_ids[row, width - len(context) :] = torch.tensor(context)
        attention[row, width - len(context) :] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    logits = _forward(
        model,
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        last_only=True,
    ).logits
    return torch.log_softmax(logits[:, -1].float(), dim=-1)


def _score_with_cache(
    model, context: list[int], continuations: list[list[int]], pad: int, batch_size: int
) -> list[float]:
    """Summed log-likelihood of each continuation after one context, the context encoded once.

    The context's forward gives the first token of every continuation its log-probability and leaves the
    key/value cache; up to `batch_size` continuations then run together on copies of that cache
    (right-padded: a real token never attends to the padding after it), each but its last token as input.
    """
    import copy

    import torch

    device = next(model.parameters()).device
    out = _forward(model, input_ids=torch.tensor([context], device=device), use_cache=True, last_only=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    terms = [[float(first[c[0]])] if c else [] for c in continuations]  # per token, summed in order
    longer = [i for i, c in enumerate(continuations) if len(c) > 1]
    for start in range(0, len(longer), batch_size):
        chunk = longer[start : start + batch_size]
        last_chunk = start + batch_size >= len(longer)
        cache = out.cache if last_chunk else copy.deepcopy(out.cache)  # a forward extends its cache
        cache.batch_repeat_interleave(len(chunk))
        width = max(len(continuations[i]) - 1 for i in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros(len(chunk), len(context) + width, dtype=torch.long)
        attention[:, : len(context)] = 1
        for row, i in enumerate(chunk):
            inputs = continuations[i][:-1]
            input_ids[row, : len(inputs)] = torch.tensor(inputs)
            attention[row, len(context) : len(context) + len(inputs)] = 1
        positions = torch.arange(len(context), len(context) + width).expand(len(chunk), -1)
        logits = _forward(
            model,
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
        ).logits
        for row, i in enumerate(chunk):
            targets = continuations[i][1:]
            table = torch.log_softmax(logits[row, : len(targets)].float(), dim=-1)
            picked = table[torch.arange(len(targets)), torch.tensor(targets, device=table.device)]
            terms[i] += [float(value) for value in picked]
    return [sum(values) for values in terms]


def evaluate_mcq(model, tokenizer, question_files: list[QuestionFile], section, shots_from: dict) -> dict:
    """Accuracy per subject ("mmlu/anatomy"), per benchmark when both are scored, and overall (micro over
    questions, macro over subjects), with the per-question rows."""
    from tqdm.auto import tqdm

    chat = section.chat
    rows, per_subject = [], {}
    truncated = 0
    limit = _context_limit(model)
    for qfile in tqdm(question_files, desc="mcq", unit="subject", leave=False):
        layout = qfile.layout
        questions = qfile.questions[: section.max_questions] if section.max_questions else qfile.questions
        asked = []  # (question, shots used, answer prefix, its pairs)
        for q in questions:
            pool = [s for s in shots_from.get(q.subject, []) if s.where != q.where]
            shots = pool[: section.shots]
            prompt = build_prompt(layout, q, shots)
            while shots and limit and len(tokenizer(prompt)["input_ids"]) + 8 > limit:
                shots = shots[:-1]  # as the harnesses do: fewer shots rather than a cut question
                prompt = build_prompt(layout, q, shots)
                truncated += 1
            prefix = answer_prefix(layout)
            if chat:
                prompt = tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
                prefix = ""
            pairs = [(prompt, prefix + letter) for letter in LETTERS[: len(q.options)]]
            if section.score in ("text", "both"):
                pairs += [(prompt, prefix + option) for option in q.options]
            asked.append((q, shots, prefix, pairs))
        # One call per subject, so that letter-only questions share forwards.
        all_scores = continuation_log_likelihoods(
            model,
            tokenizer,
            [pair for *_, pairs in asked for pair in pairs],
            batch_size=section.batch_size,
            add_special_tokens=not chat,
        )
        taken = 0
        for q, shots, prefix, pairs in asked:
            scores = all_scores[taken : taken + len(pairs)]
            taken += len(pairs)
            letters = scores[: len(q.options)]
            benchmark = layout if layout in ("cmmlu", "ceval") else "mmlu"
            row = {
                "benchmark": benchmark,
                "subject": f"{benchmark}/{q.subject}",
                "where": q.where,
                "answer": LETTERS[q.answer],
                "shots": len(shots),
                "letter_log_likelihoods": letters,
                "predicted": LETTERS[max(range(len(letters)), key=letters.__getitem__)],
            }
            if section.score in ("text", "both"):
                texts = scores[len(q.options) :]
                norm = [s / max(len(prefix + o), 1) for s, o in zip(texts, q.options, strict=True)]
                row["text_log_likelihoods"] = texts
                row["predicted_text"] = LETTERS[max(range(len(texts)), key=texts.__getitem__)]
                row["predicted_text_norm"] = LETTERS[max(range(len(norm)), key=norm.__getitem__)]
            rows.append(row)
            per_subject.setdefault(row["subject"], []).append(row)
    if not rows:
        raise LlmtuneError("mcq: no questions to score (check mcq.files).")
    metrics = {"questions": len(rows), "subjects": {}, "shots_reduced_to_fit": truncated}
    for name in ("predicted", "predicted_text", "predicted_text_norm"):
        if name not in rows[0]:
            continue
        key = {
            "predicted": "accuracy",
            "predicted_text": "accuracy_text",
            "predicted_text_norm": "accuracy_text_norm",
        }[name]
        metrics[key] = sum(r[name] == r["answer"] for r in rows) / len(rows)
        subject_scores = {
            s: sum(r[name] == r["answer"] for r in rs) / len(rs) for s, rs in sorted(per_subject.items())
        }
        metrics[f"macro_{key}"] = sum(subject_scores.values()) / len(subject_scores)
        for subject, value in subject_scores.items():
            metrics["subjects"].setdefault(subject, {"questions": len(per_subject[subject])})[key] = value
        benchmarks = sorted({r["benchmark"] for r in rows})
        if len(benchmarks) > 1:
            for benchmark in benchmarks:
                chosen = [r for r in rows if r["benchmark"] == benchmark]
                metrics.setdefault("benchmarks", {}).setdefault(benchmark, {"questions": len(chosen)})[
                    key
                ] = sum(r[name] == r["answer"] for r in chosen) / len(chosen)
    return {"metrics": metrics, "rows": rows}


def _context_limit(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None
