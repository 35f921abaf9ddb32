"""Documents → question/answer chat JSONL, written by a model through any OpenAI-compatible endpoint.

    read (Markdown, HTML main text, plain text; files or folders)
      → sections along headings, each within a token budget
      → one chat request per section asking for N {question, answer} pairs (response_format json_schema;
        tunery's server decodes it under the schema with xgrammar, so the reply always parses)
      → checks (empty, duplicate, answer not grounded in the section, …) → chat JSONL + sidecars

The output file is plain OpenAI chat JSONL. Beside it:
  <out>.sources.jsonl  one line per output line: which section (file, heading path, id) the pair came from
  <out>.state.json     what is done; a re-run skips finished sections and continues after the last one
Each section's lines are appended and then the state is replaced atomically; on start the output is cut
back to the line count the state records, so an interrupted run never leaves a half-written section.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterable

from tunery.errors import InvalidRequest, TuneryError

MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TEXT_SUFFIXES = (".txt", ".text", ".rst")
SUFFIXES = MARKDOWN_SUFFIXES + HTML_SUFFIXES + TEXT_SUFFIXES
STATE_VERSION = 1

DEFAULT_INSTRUCTIONS = (
    "You write question and answer pairs for a website's help bot. Each question is one a visitor could "
    "ask; each answer is one or two sentences that use only facts stated in the text.")

REJECT_REASONS = {
    "empty": "question or answer empty",
    "duplicate": "same question as an earlier pair",
    "not_grounded": "answer not grounded in the section",
    "answer_is_question": "answer repeats the question",
    "too_long": "question or answer too long",
    "not_a_question": "question is not a question",
}


# --- reading ---------------------------------------------------------------------------------------

@dataclass
class Document:
    path: str
    """As given on the command line or relative to the folder given (stable across runs)."""
    title: str
    text: str
    """Markdown-like text: headings as '#' lines, paragraphs separated by blank lines."""


# Elements whose text is page furniture, not content.
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form",
              "button", "select", "iframe", "head"}
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "li", "ul", "ol", "table", "tr", "blockquote", "pre",
               "dl", "dt", "dd", "figure", "figcaption", "br", "hr", "td", "th"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _MainText(HTMLParser):
    """HTML → Markdown-like text of the main content (<main>/<article> when present; no nav, footer, …)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.skip = 0
        self.parts: list[tuple[bool, str]] = []  # (inside main/article, text)
        self.main_depth = 0
        self.saw_main = False
        self.title: list[str] = []
        self.in_title = False
        self.heading: int | None = None

    def handle_starttag(self, tag, attrs):
        role = dict(attrs).get("role") or ""
        hidden = "hidden" in dict(attrs) or role in ("navigation", "banner", "contentinfo", "complementary")
        if tag in _VOID:
            if tag in ("br", "hr"):
                self._emit("\n")
            return
        self.stack.append(tag)
        if tag == "title":
            self.in_title = True
        if self.skip or tag in _SKIP_TAGS or hidden:
            self.skip += 1
            return
        if tag in ("main", "article") or role == "main":
            self.main_depth += 1
            self.saw_main = True
        if re.fullmatch(r"h[1-6]", tag):
            self.heading = int(tag[1])
            self._emit("\n\n" + "#" * self.heading + " ")
        elif tag == "li":
            self._emit("\n- ")
        elif tag in _BLOCK_TAGS:
            self._emit("\n\n")

    def handle_endtag(self, tag):
        if tag in _VOID or tag not in self.stack:
            return
        while self.stack:
            open_tag = self.stack.pop()
            if open_tag == "title":
                self.in_title = False
            if self.skip:
                self.skip -= 1
            elif open_tag in ("main", "article") and self.main_depth:
                self.main_depth -= 1
            elif re.fullmatch(r"h[1-6]", open_tag):
                self.heading = None
                self._emit("\n\n")
            elif open_tag in _BLOCK_TAGS:
                self._emit("\n\n")
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)
        if self.skip:
            return
        text = re.sub(r"\s+", " ", data)
        if self.heading is not None:
            text = text.replace("\n", " ")
        self._emit(text)

    def _emit(self, text: str) -> None:
        self.parts.append((self.main_depth > 0, text))

    def result(self) -> tuple[str, str]:
        chosen = [t for inside, t in self.parts if inside or not self.saw_main]
        return " ".join("".join(self.title).split()), _tidy("".join(chosen))


def _tidy(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out = "\n".join(lines)
    out = re.sub(r"^(#+) +", r"\1 ", out, flags=re.M)
    out = re.sub(r"^#+ *$", "", out, flags=re.M)  # an empty heading
    out = re.sub(r"^(#{1,6} .+)$", r"\n\1\n", out, flags=re.M)  # a heading is a block of its own
    out = re.sub(r"\n{3,}", "\n\n", out)
    return out.strip()


def html_to_text(html: str) -> tuple[str, str]:
    """(title, main text as Markdown-like text) of an HTML page."""
    p = _MainText()
    p.feed(html)
    p.close()
    return p.result()


_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.S)


def markdown_to_text(md: str) -> tuple[str, str]:
    """(title, text): front matter, comments, images and link targets removed; headings kept."""
    title = ""
    m = _FRONT_MATTER.match(md)
    if m:
        t = re.search(r"^title:\s*['\"]?(.+?)['\"]?\s*$", m.group(0), re.M)
        title = t.group(1) if t else ""
        md = md[m.end():]
    md = re.sub(r"<!--.*?-->", "", md, flags=re.S)
    md = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", md)          # images → alt text
    md = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", md)            # links → their text
    md = re.sub(r"^\s*\[[^\]]+\]:\s*\S+.*$", "", md, flags=re.M)  # reference definitions
    # Setext headings (Title\n=====) → ATX.
    md = re.sub(r"^(.+)\n=+\s*$", r"# \1", md, flags=re.M)
    md = re.sub(r"^(.+)\n-{3,}\s*$", r"## \1", md, flags=re.M)
    md = re.sub(r"^(#{1,6})\s+(.*?)\s*#*\s*$", r"\1 \2", md, flags=re.M)
    md = re.sub(r"(\*\*|__)(.+?)\1", r"\2", md)                  # bold markers
    text = _tidy(md)
    if not title:
        h = re.search(r"^# (.+)$", text, re.M)
        title = h.group(1) if h else ""
    return title, text


def _iter_files(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str]]:
    """(file, display path) for every readable document under the given files and folders, sorted."""
    out: list[tuple[Path, str]] = []
    missing = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in SUFFIXES and not any(
                        part.startswith(".") for part in f.relative_to(p).parts):
                    out.append((f, str(Path(p.name) / f.relative_to(p))))
        elif p.is_file():
            out.append((p, p.name if p.is_absolute() else str(p)))
        else:
            missing.append(str(raw))
    if missing:
        raise InvalidRequest(f"no such file or folder: {', '.join(missing)}", param="docs")
    return out


def read_documents(paths: Iterable[str | os.PathLike]) -> list[Document]:
    """Every Markdown, HTML and text document under `paths` (unknown suffixes in folders are ignored)."""
    docs = []
    for f, shown in _iter_files(paths):
        raw = f.read_bytes()
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            content = raw.decode("latin-1")
        suffix = f.suffix.lower()
        if suffix in HTML_SUFFIXES or (suffix not in SUFFIXES and "<html" in content[:2000].lower()):
            title, text = html_to_text(content)
        elif suffix in TEXT_SUFFIXES:
            title, text = "", _tidy(content)
        else:
            title, text = markdown_to_text(content)
        docs.append(Document(shown, title or f.stem.replace("-", " ").replace("_", " "), text))
    return docs


# --- sections --------------------------------------------------------------------------------------

@dataclass
class Section:
    id: str
    """Stable hash of source, heading path and text: what resuming keys on."""
    source: str
    heading: str
    """Heading path, e.g. 'Opening hours > Holidays'."""
    text: str
    tokens: int


_HEADING = re.compile(r"^(#{1,6}) (.+)$")


def _chunks(paragraphs: list[str], budget: int, count: Callable[[list[str]], list[int]]) -> list[str]:
    """Greedy groups of whole paragraphs within `budget` tokens; a paragraph over budget is cut at sentences
    (a single sentence over budget stays whole: cutting inside it would ask questions about half a fact)."""
    units: list[tuple[str, str]] = []  # (text, separator before it)
    for para, n in zip(paragraphs, count(paragraphs)):
        if n <= budget:
            units.append((para, "\n\n"))
        else:
            for i, sent in enumerate(re.split(r"(?<=[.!?])\s+", para)):
                units.append((sent, "\n\n" if i == 0 else " "))
    groups: list[str] = []
    cur, used = "", 0
    for (text, sep), n in zip(units, count([u for u, _ in units])):
        if cur and used + n > budget:
            groups.append(cur)
            cur, used = "", 0
        cur = text if not cur else cur + sep + text
        used += n
    if cur:
        groups.append(cur)
    return groups


def split_sections(doc: Document, budget: int, count: Callable[[list[str]], list[int]],
                   min_tokens: int = 8) -> list[Section]:
    """Sections along the document's headings, each body within `budget` tokens (long ones split at
    paragraphs); a heading with no text of its own is folded into the heading path of what follows."""
    blocks: list[tuple[list[str], list[str]]] = []  # (heading path, paragraphs)
    path: list[tuple[int, str]] = []
    paras: list[str] = []

    def flush():
        if paras:
            blocks.append(([h for _, h in path] or [doc.title], list(paras)))
            paras.clear()

    for para in re.split(r"\n\s*\n", doc.text):
        para = para.strip()
        if not para:
            continue
        first, _, rest = para.partition("\n")
        m = _HEADING.match(first)
        if m:
            flush()
            level = len(m.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, m.group(2).strip())]
            para = rest.strip()
            if not para:
                continue
        paras.append(para)
    flush()
    out: list[Section] = []
    for heads, ps in blocks:
        if doc.title and heads[0] != doc.title:
            heads = [doc.title, *heads]
        heading = " > ".join(dict.fromkeys(heads))
        for text in _chunks(ps, budget, count):
            n = count([text])[0]
            if n < min_tokens:
                continue
            sid = hashlib.sha1(f"{doc.path}\0{heading}\0{text}".encode()).hexdigest()[:16]
            out.append(Section(sid, doc.path, heading, text, n))
    return out


# --- checks ----------------------------------------------------------------------------------------

_STOPWORDS = frozenset("""a an the and or but if then than of to in on at by for with from into onto about as is are
was were be been being it its this that these those there here what which who whom whose when where why how
do does did done can could should would will shall may might must have has had having not no yes you your
yours we our ours they their them he she his her i me my mine so very just also any some all each every
more most other such only own same too s t don doesn isn aren wasn weren up down out over under again
please tell give know get""".split())


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def content_words(text: str) -> list[str]:
    return [w for w in _words(text) if w not in _STOPWORDS and (len(w) > 2 or w.isdigit())]


def grounding(answer: str, section: str) -> float:
    """Share of the answer's content words (and numbers) that occur in the section (1.0 for none)."""
    words = content_words(answer)
    if not words:
        return 0.0
    have = set(_words(section))
    # Light stemming: "opens" is grounded by "open", "buses" by "bus".
    def found(w: str) -> bool:
        return w in have or w.rstrip("s") in have or (w + "s") in have or w.rstrip("es") in have
    return sum(found(w) for w in words) / len(words)


def normalize_question(q: str) -> str:
    return " ".join(_words(q))


@dataclass
class Limits:
    min_grounding: float = 0.5
    """Answers with fewer of their content words in the section are rejected as not grounded."""
    max_question_chars: int = 160
    max_answer_chars: int = 320


def check_pair(q: str, a: str, section: Section, seen: set[str], limits: Limits) -> str | None:
    """The reject reason of a pair, or None when it is kept."""
    q, a = (q or "").strip(), (a or "").strip()
    if not q or not a:
        return "empty"
    if len(q) > limits.max_question_chars or len(a) > limits.max_answer_chars:
        return "too_long"
    if len(_words(q)) < 2:
        return "not_a_question"
    nq = normalize_question(q)
    if nq in seen:
        return "duplicate"
    if normalize_question(a) == nq:
        return "answer_is_question"
    if grounding(a, section.text) < limits.min_grounding:
        return "not_grounded"
    return None


# --- asking the model ------------------------------------------------------------------------------

def pairs_schema(n: int, limits: "Limits | None" = None) -> dict:
    """{"pairs": [n × {question, answer}]}; the length caps keep a small model from rambling to max_tokens."""
    lim = limits or Limits()
    pair = {"type": "object", "properties": {
                "question": {"type": "string", "minLength": 1, "maxLength": lim.max_question_chars},
                "answer": {"type": "string", "minLength": 1, "maxLength": lim.max_answer_chars}},
            "required": ["question", "answer"], "additionalProperties": False}
    return {"type": "object", "properties": {"pairs": {"type": "array", "items": pair, "minItems": n,
                                                       "maxItems": n}},
            "required": ["pairs"], "additionalProperties": False}


def build_messages(section: Section, n: int, instructions: str) -> list[dict]:
    user = (f"Text (from {section.source}, section \"{section.heading}\"):\n\n{section.text}\n\n"
            f"Write {n} different questions a visitor might ask that this text answers, each with its answer "
            "from the text. Reply as JSON: {\"pairs\": [{\"question\": ..., \"answer\": ...}]}.")
    return [{"role": "system", "content": instructions}, {"role": "user", "content": user}]


def parse_pairs(content: str | None) -> list[tuple[str, str]] | None:
    """The (question, answer) pairs in a reply, or None when it is not the asked-for JSON."""
    try:
        obj = json.loads(content or "")
    except ValueError:
        m = re.search(r"\{.*\}", content or "", re.S)  # endpoints without constrained decoding may wrap it
        try:
            obj = json.loads(m.group(0)) if m else None
        except ValueError:
            return None
    items = obj.get("pairs") if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if not isinstance(items, list):
        return None
    out = []
    for it in items:
        if isinstance(it, dict):
            q, a = it.get("question"), it.get("answer")
            out.append((q if isinstance(q, str) else "", a if isinstance(a, str) else ""))
    return out


@dataclass
class GenerateConfig:
    base_url: str
    model: str
    api_key: str = "tunery"
    pairs_per_section: int = 3
    system: str | None = None
    """System message of every written example (the bot's own prompt at serve time)."""
    stop_suffix: str | None = None
    """Appended to every answer, e.g. ' **STOP**', for a stop sequence at serve time."""
    budget: int = 400
    """Most tokens of document text per section."""
    instructions: str = DEFAULT_INSTRUCTIONS
    temperature: float = 0.0
    max_tokens: int = 600
    concurrency: int = 2
    timeout: float = 600.0
    tokenizer_model: str | None = None
    """Whose tokenizer measures the budget (default: the bundled model's; loaded locally)."""
    limits: Limits = field(default_factory=Limits)

    def fingerprint(self) -> dict:
        """What must match for a re-run to continue an output instead of starting over."""
        return {"model": self.model, "pairs_per_section": self.pairs_per_section, "system": self.system,
                "stop_suffix": self.stop_suffix, "budget": self.budget, "instructions": self.instructions}


@dataclass
class GenerateReport:
    out_path: str
    sources_path: str
    state_path: str
    n_documents: int = 0
    n_sections: int = 0
    n_sections_done_before: int = 0
    n_sections_done: int = 0
    n_sections_failed: int = 0
    n_pairs_asked: int = 0
    n_pairs_written: int = 0
    n_pairs_total: int = 0
    """Lines in the output after this run (earlier runs included)."""
    rejects: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """First few sections that failed (endpoint errors, replies that were not the JSON asked for)."""

    def to_dict(self) -> dict:
        return asdict(self)


def sidecar_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".sources.jsonl"), out.with_name(out.name + ".state.json")


def _read_state(state_path: Path) -> dict | None:
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidRequest(f"{state_path} is not valid JSON ({exc}); delete it or pass --force",
                             param="out") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise InvalidRequest(f"{state_path} was not written by this version of tunery; pass --force",
                             param="out")
    return state


def _write_state(state_path: Path, state: dict) -> None:
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, state_path)


def _cut_to(path: Path, n_lines: int) -> list[str]:
    """Keep the first n_lines lines of path (what the state vouches for); return them."""
    if not path.exists():
        if n_lines:
            raise InvalidRequest(f"{path} is missing but the state says it has {n_lines} lines; pass --force",
                                 param="out")
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < n_lines:
        raise InvalidRequest(f"{path} has {len(lines)} lines but the state says {n_lines}; pass --force",
                             param="out")
    if len(lines) > n_lines:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines[:n_lines])
    return lines[:n_lines]


def _count_fn(tokenizer_model: str | None) -> Callable[[list[str]], list[int]]:
    from tunery.data.tokens import get_counter
    from tunery.models import DEFAULT_MODEL

    counter = get_counter(tokenizer_model or DEFAULT_MODEL)
    return lambda texts: counter.count_texts(list(texts)) if texts else []


def generate(docs: list[str | os.PathLike], out: str | os.PathLike, cfg: GenerateConfig, *, force: bool = False,
             on_plan: Callable[[int, int], None] | None = None,
             on_section: Callable[[Section, int, str | None], None] | None = None) -> GenerateReport:
    """Write chat JSONL of generated Q&A pairs for every section of `docs` (see the module docstring).

    on_plan(n_sections, n_already_done) once before asking; on_section(section, pairs_kept, failure) after each.
    """
    import openai

    if not 1 <= cfg.pairs_per_section <= 20:
        raise InvalidRequest("pairs per section must be between 1 and 20", param="n")
    if cfg.budget < 32:
        raise InvalidRequest("the section budget must be at least 32 tokens", param="budget")
    out = Path(out)
    sources_path, state_path = sidecar_paths(out)
    documents = read_documents(docs)
    if not documents:
        raise InvalidRequest("no Markdown, HTML or text documents found "
                             f"(looked for {', '.join(SUFFIXES)})", param="docs")
    count = _count_fn(cfg.tokenizer_model)
    sections = [s for d in documents for s in split_sections(d, cfg.budget, count)]
    if not sections:
        raise InvalidRequest("the documents have no text to ask about", param="docs")
    rep = GenerateReport(str(out), str(sources_path), str(state_path), n_documents=len(documents),
                         n_sections=len(sections))

    state = None if force else _read_state(state_path)
    if state is None and out.exists() and out.stat().st_size and not force:
        raise InvalidRequest(f"{out} exists and was not written by `tunery data generate` "
                             "(no state file beside it); pass --force to overwrite it", param="out")
    if state is not None and state.get("config") != cfg.fingerprint():
        raise InvalidRequest(f"{out} was generated with other settings ({_diff(state['config'], cfg.fingerprint())}); "
                             "pass --force to start over, or -o another file", param="out")
    if state is None:
        state = {"version": STATE_VERSION, "config": cfg.fingerprint(), "lines": 0, "sections": {}}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("", encoding="utf-8")
        sources_path.write_text("", encoding="utf-8")
        _write_state(state_path, state)
    _cut_to(out, state["lines"])
    seen = {normalize_question(json.loads(line)["question"]) for line in _cut_to(sources_path, state["lines"])}
    todo = [s for s in sections if state["sections"].get(s.id, {}).get("status") != "done"]
    rep.n_sections_done_before = len(sections) - len(todo)
    rejects: Counter = Counter()
    if on_plan:
        on_plan(len(sections), rep.n_sections_done_before)

    client = openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key, timeout=cfg.timeout, max_retries=2)
    schema = pairs_schema(cfg.pairs_per_section, cfg.limits)

    def ask(section: Section) -> tuple[list[tuple[str, str]] | None, str | None]:
        try:
            resp = client.chat.completions.create(
                model=cfg.model, messages=build_messages(section, cfg.pairs_per_section, cfg.instructions),
                temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=0,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "qa_pairs", "schema": schema, "strict": True}})
        except openai.APIConnectionError as exc:
            raise TuneryError(f"cannot reach {cfg.base_url} ({exc.__cause__ or exc}); is `tunery serve` "
                              "running? (or pass --base-url)") from None
        except openai.AuthenticationError:
            raise TuneryError(f"{cfg.base_url} refused the API key; pass --api-key") from None
        except openai.NotFoundError as exc:
            raise TuneryError(f"{cfg.base_url} has no model {cfg.model!r} ({_msg(exc)})") from None
        except openai.APIError as exc:
            return None, f"{section.heading}: {_msg(exc)}"
        content = resp.choices[0].message.content if resp.choices else None
        pairs = parse_pairs(content)
        if pairs is None:
            reason = "cut off by max_tokens" if resp.choices and resp.choices[0].finish_reason == "length" \
                else "reply is not the JSON asked for"
            return None, f"{section.heading}: {reason}"
        return pairs, None

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, cfg.concurrency)) as pool, \
            open(out, "a", encoding="utf-8") as fout, open(sources_path, "a", encoding="utf-8") as fsrc:
        # map() yields in section order, so the output (and which duplicate wins) does not depend on timing.
        for section, (pairs, failure) in zip(todo, pool.map(ask, todo)):
            kept = 0
            if failure is not None:
                rep.n_sections_failed += 1
                if len(rep.failures) < 5:
                    rep.failures.append(failure)
                state["sections"][section.id] = {"status": "failed", "error": failure}
            else:
                rep.n_pairs_asked += len(pairs)
                sec_rejects: Counter = Counter()
                for q, a in pairs:
                    reason = check_pair(q, a, section, seen, cfg.limits)
                    if reason:
                        sec_rejects[reason] += 1
                        continue
                    q, a = q.strip(), a.strip()
                    seen.add(normalize_question(q))
                    answer = a + cfg.stop_suffix if cfg.stop_suffix and not a.endswith(cfg.stop_suffix) else a
                    msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
                        {"role": "user", "content": q}, {"role": "assistant", "content": answer}]
                    fout.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
                    fsrc.write(json.dumps({"line": state["lines"] + kept + 1, "section_id": section.id,
                                           "source": section.source, "heading": section.heading,
                                           "question": q}, ensure_ascii=False) + "\n")
                    kept += 1
                rejects.update(sec_rejects)
                state["lines"] += kept
                state["sections"][section.id] = {"status": "done", "source": section.source,
                                                 "heading": section.heading, "pairs": kept,
                                                 "rejects": dict(sec_rejects)}
                rep.n_sections_done += 1
                rep.n_pairs_written += kept
            fout.flush()
            fsrc.flush()
            _write_state(state_path, state)
            if on_section:
                on_section(section, kept, failure)
    rep.rejects = {k: rejects.get(k, 0) for k in REJECT_REASONS}
    rep.n_pairs_total = state["lines"]
    return rep


def _msg(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    return (inner.get("message") if isinstance(inner, dict) else None) or str(exc)


def _diff(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new.get(k)]
    return ", ".join(f"{k} was {old.get(k)!r}" for k in keys) or "unknown"
