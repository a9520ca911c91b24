"""The inference engine behind evaluation and the local model server: greedy, batched, decoded by policy.

``generate`` answers a list of conversations in batches of similar length, each row under its
``DecodingPolicy``: a label set through ``AnswerTrie`` (a row done as soon as one label is left),
a JSON object through an llguidance grammar (the workload's schema when it has one; a grounded
policy's per-request grammar, ``distillery.grounding``), free text unconstrained. Every batch runs
the same way (``_decode_batch``): the prompt prefix every row shares computed once, the rest
packed without padding, rows leaving as they finish. ``BatchingEngine`` serves concurrent requests
with the same ``generate``: requests that arrive together run as one batch, so the server answers
what evaluation scored.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from distillery.models import answer_token_ids, load_tokenizer
from distillery.tasks import JSON_WHITESPACE, DecodingPolicy, confidence


@dataclass
class Generation:
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    latency_ms: float  # generate: the wall time of the row's batch; BatchingEngine: from submit to answer
    # The tokens the answer's decoding chose (the stop token included) and the log-probability of each, normalized
    # over the tokens the decoding policy allowed at that step: for a label policy their sum is the label's
    # log-probability among the labels (a token the label set forces has log-probability 0). What a cascade's
    # confidence is made of (``distillery.tasks.confidence``).
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    note: str | None = None  # how the policy could not be applied in full (a grounded policy without user text)

    def confidence(self, measure: str) -> float:
        return confidence(measure, self.token_logprobs)


def load_model(base_model: str, adapters: dict[str, Path] | None = None):
    """The base model, wrapped in peft with every named adapter loaded when there are any."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    for i, (name, path) in enumerate((adapters or {}).items()):
        if i == 0:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
    model.eval()
    tokenizer = load_tokenizer(base_model)
    tokenizer.padding_side = "left"
    return model, tokenizer


@contextlib.contextmanager
def using_adapter(model, name: str | None) -> Iterator[None]:
    """Generate with the named adapter, or with the bare base model when ``name`` is None."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        if name is not None:
            raise ValueError(f"no adapter {name!r}: the model was loaded without adapters")
        yield
    elif name is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


class AnswerTrie:
    """The token sequences of a closed answer set (classification labels), for constrained decoding.

    At each step only tokens that continue some answer are allowed; a completed answer allows
    only end-of-turn. The model then always produces one of the answers, exactly spelled.
    """

    def __init__(self, tokenizer, answers: tuple[str, ...]):
        self._children: dict[tuple[int, ...], set[int]] = {}
        # prefix -> the one answer's full token ids, for prefixes only one answer starts with
        self._unique: dict[tuple[int, ...], list[int]] = {}
        starting: dict[tuple[int, ...], list[list[int]]] = {}
        for answer in dict.fromkeys(answers):
            ids = answer_token_ids(tokenizer, answer)
            for i in range(len(ids)):
                self._children.setdefault(tuple(ids[:i]), set()).add(ids[i])
            for i in range(len(ids) + 1):
                starting.setdefault(tuple(ids[:i]), []).append(ids)
        self._unique = {prefix: found[0] for prefix, found in starting.items() if len(found) == 1}
        self.end_ids = [tokenizer.eos_token_id]

    def allowed(self, generated: list[int]) -> list[int]:
        return sorted(self._children.get(tuple(generated), ())) or self.end_ids

    def completion(self, generated: list[int]) -> list[int] | None:
        """The whole answer when only one answer starts with ``generated``: no need to decode the rest."""
        return self._unique.get(tuple(generated))


def _stop_at(tokens: list[int], stop_ids: list[int]) -> tuple[list[int], bool]:
    for k, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:k], True
    return tokens, False


def _common_prefix(sequences: list[list[int]]) -> int:
    first = min(sequences, key=len)
    for k, token in enumerate(first):
        if any(seq[k] != token for seq in sequences):
            return k
    return len(first)


class _SharedPrefix:
    """The key/value cache of the tokens every prompt starts with (system prompt, template), computed once."""

    def __init__(self, model, prefix: list[int]):
        from transformers import DynamicCache

        self.length = len(prefix)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if prefix:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([prefix], device=model.device), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
            self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def cache_for(self, model, rows: int):
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        for index, (keys, values) in enumerate(self.layers):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
        return cache


@torch.no_grad()
def _packed_prefill(model, suffixes: list[list[int]], prefix: _SharedPrefix):
    """Run every suffix after the shared prefix as one packed sequence, without padding.

    Rows of different lengths padded to the longest spend their padding's compute: micro-batches of 16
    random held-out demo prompts ran at 10.4-12.5 rows/s padded and 12.6-13.6 packed, against 13.9-14.8
    for evaluation's length-sorted batches of 32 (2-core machine, interleaved runs). Packed, each token
    attends to the prefix and to its own row's earlier tokens (a block-diagonal causal mask). Returns each
    row's next-token logits and the state decoding continues from: the cache rebuilt per row, left-padded,
    with its attention mask and positions.
    """
    from transformers import DynamicCache

    device, rows, shared = model.device, len(suffixes), prefix.length
    lengths = torch.tensor([len(s) for s in suffixes], device=device)
    ends = lengths.cumsum(0)
    starts, total, width = ends - lengths, int(ends[-1]), int(lengths.max())
    row_of = torch.repeat_interleave(torch.arange(rows, device=device), lengths)
    offsets = torch.arange(total, device=device) - starts[row_of]
    own_row = (row_of[:, None] == row_of[None, :]) & torch.ones(total, total, dtype=torch.bool, device=device).tril()
    mask = torch.cat([own_row.new_ones((total, shared)), own_row], dim=1)[None, None]
    cache = prefix.cache_for(model, 1)
    logits = model(input_ids=torch.tensor([[t for s in suffixes for t in s]], device=device), attention_mask=mask,
                   position_ids=(shared + offsets)[None], past_key_values=cache, use_cache=True,
                   logits_to_keep=ends - 1).logits[0]
    if rows == 1:  # already the layout decoding continues from
        return logits, cache, lengths.new_ones((1, shared + total)), shared + lengths
    pad = width - lengths
    # Row r's tokens sit at [shared + starts[r], shared + ends[r]); left-padded, row r's slot k holds token
    # k - pad[r] of its row (slots before pad[r] are masked out).
    slot = torch.arange(width, device=device)[None, :] - pad[:, None]
    gather = (shared + starts[:, None] + slot.clamp(min=0)).reshape(-1)
    unpacked = DynamicCache(config=model.config)
    for index, layer in enumerate(cache.layers):
        keys, values = (t[0].index_select(1, gather).unflatten(1, (rows, width)).transpose(0, 1)
                        for t in (layer.keys, layer.values))
        unpacked.update(torch.cat([layer.keys[:, :, :shared].expand(rows, -1, -1, -1), keys], dim=2),
                        torch.cat([layer.values[:, :, :shared].expand(rows, -1, -1, -1), values], dim=2), index)
    attention_mask = torch.cat([lengths.new_ones((rows, shared)), (slot >= 0).long()], dim=1)
    return logits, unpacked, attention_mask, shared + lengths


class _LabelRow:
    """A row decoded to one of a label set (``AnswerTrie``): done as soon as only one label can follow."""

    matcher = None

    def __init__(self, trie: AnswerTrie):
        self.trie = trie

    def start(self) -> list[int] | None:
        return self.trie.completion([])

    def allowed(self, generated: list[int]) -> list[int]:
        return self.trie.allowed(generated)

    def advance(self, generated: list[int]) -> list[int] | None:
        """The whole answer once it is decided, else None (the row goes on)."""
        return self.trie.completion(generated) or (generated if generated[-1] in self.trie.end_ids else None)


class _GrammarRow:
    """A row decoded under an llguidance grammar (a JSON schema, or a grounded answer's Lark grammar)."""

    def __init__(self, grammar_tokenizer, grammar: str, stop_ids: list[int]):
        import llguidance

        self.matcher = llguidance.LLMatcher(grammar_tokenizer, grammar)
        if self.matcher.is_error():
            raise ValueError(f"the decoding grammar is invalid: {self.matcher.get_error()}")
        self.stop_ids = stop_ids

    def start(self) -> None:
        return None

    def forced(self) -> list[int]:
        """The tokens the grammar allows alone at the start (``{"`` of a JSON object): run with the prompt."""
        tokens = self.matcher.compute_ff_tokens()
        self.matcher.consume_tokens(tokens)
        return tokens

    def advance(self, generated: list[int]) -> list[int] | None:
        if not self.matcher.consume_token(generated[-1]):
            return generated  # never a token its own mask allowed; were it, the row ends there (an invalid answer)
        if generated[-1] in self.stop_ids:
            return generated
        # a grammar that can end only here (a closed object) stops without asking the model: the stop is forced
        return generated + self.stop_ids[:1] if self.matcher.is_stopped() else None


class _FreeRow:
    """A row decoded unconstrained, up to its stop token."""

    matcher = None

    def __init__(self, stop_ids: list[int]):
        self.stop_ids = stop_ids

    def start(self) -> None:
        return None

    def advance(self, generated: list[int]) -> list[int] | None:
        return generated if generated[-1] in self.stop_ids else None


class _Masks:
    """The grammar rows' allowed tokens for the next step, computed by llguidance's threads while the model runs the
    step (off the critical path: the mask of step t+1 depends only on the token chosen at step t)."""

    def __init__(self, rows: int, vocab_size: int):
        import llguidance
        import llguidance.torch

        self.bitmask = llguidance.torch.allocate_token_bitmask(rows, vocab_size)
        self._executor = llguidance.LLExecutor()
        self._fill = llguidance.torch.fill_next_token_bitmask_par
        self._apply = llguidance.torch.apply_token_bitmask_inplace
        self._pending: concurrent.futures.Future | None = None

    def start(self, rows: list) -> None:
        """Begin computing the masks of ``rows`` (position j: its constraint); rows without a grammar allow all."""
        self.bitmask[: len(rows)].fill_(-1)
        matchers = [(row.matcher, j) for j, row in enumerate(rows) if row.matcher is not None]
        self._pending = _MASK_THREAD.submit(self._fill, self._executor, matchers, self.bitmask) if matchers else None

    def apply(self, scores: torch.Tensor) -> None:
        if self._pending is not None:
            self._pending.result()
            self._apply(scores, self.bitmask[: scores.shape[0]].to(scores.device))


_MASK_THREAD = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")


@torch.no_grad()
def _decode_batch(model, suffixes: list[list[int]], prefix: _SharedPrefix, constraints: list,
                  max_new_tokens: int, vocab_size: int) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy decoding of one batch of prompts (``prefix`` + each suffix), each row under its own constraint.

    The shared prompt prefix is computed once, the suffixes run packed (``_packed_prefill``), and a row leaves the
    batch as soon as its answer is decided: a label once only one can follow (the rest is known without running the
    model), a grammar once it is complete, free text at its stop token. A grammar's opening tokens are run with the
    prompt, and its masks are computed while the model runs (``_Masks``). Returns each row's tokens and their
    log-probabilities among the tokens its constraint allowed (a token decided by the constraint alone: 0).
    """
    rows, device = len(suffixes), model.device
    generated: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    answers: list[list[int] | None] = [c.start() for c in constraints]
    for r, constraint in enumerate(constraints):
        if answers[r] is None and constraint.matcher is not None:
            generated[r] = constraint.forced()[:max_new_tokens]
            logprobs[r] = [0.0] * len(generated[r])
            if len(generated[r]) == max_new_tokens:
                answers[r] = generated[r]
    active = [r for r in range(rows) if answers[r] is None]
    if not active:
        return answers, logprobs  # type: ignore[return-value]
    masks = _Masks(len(active), vocab_size)
    masks.start([constraints[r] for r in active])
    logits, cache, attention_mask, next_position = _packed_prefill(model, [suffixes[r] + generated[r] for r in active],
                                                                   prefix)
    while True:
        scores = logits.float()
        masks.apply(scores)
        for j, r in enumerate(active):
            if isinstance(constraints[r], _LabelRow):
                allowed = constraints[r].allowed(generated[r])
                kept = scores[j, allowed]
                scores[j] = float("-inf")
                scores[j, allowed] = kept
        chosen = torch.log_softmax(scores, dim=-1).max(dim=-1)
        tokens, still = [], []
        for j, (r, token, logprob) in enumerate(zip(active, chosen.indices.tolist(), chosen.values.tolist())):
            generated[r].append(token)
            logprobs[r].append(logprob)
            answers[r] = constraints[r].advance(generated[r])
            if answers[r] is None and len(generated[r]) >= max_new_tokens:
                answers[r] = generated[r]
            if answers[r] is None:
                tokens.append(token)
                still.append(j)
        if not still:
            break
        if len(still) < len(active):
            keep = torch.tensor(still, device=device)
            for layer in cache.layers:
                layer.batch_select_indices(keep)
            attention_mask, next_position = attention_mask[keep], next_position[keep]
        active = [active[j] for j in still]
        masks.start([constraints[r] for r in active])
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        logits = model(input_ids=torch.tensor(tokens, device=device).unsqueeze(1), attention_mask=attention_mask,
                       position_ids=next_position.unsqueeze(1), past_key_values=cache, use_cache=True).logits[:, -1, :]
        next_position = next_position + 1
    return answers, logprobs  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _answer_trie(tokenizer, labels: tuple[str, ...]) -> AnswerTrie:
    return AnswerTrie(tokenizer, labels)


@functools.lru_cache(maxsize=8)
def _grammar_tokenizer(tokenizer):
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer)


@functools.lru_cache(maxsize=64)
def _json_grammar(json_schema: str | None, whitespace_pattern: str = JSON_WHITESPACE) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(json_schema or '{"type": "object"}',
                                                         overrides={"whitespace_pattern": whitespace_pattern})


def check_grammar(tokenizer, grammar: str) -> None:
    """A ValueError saying what is wrong with a request's own Lark grammar (before it joins a batch, which it would
    fail as a whole)."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", grammar), _grammar_tokenizer(tokenizer))
    if error:
        raise ValueError(f"the grammar is not valid llguidance Lark: {error.strip()}")


def _constraint(tokenizer, policy: DecodingPolicy, conversation: list[dict], stop_ids: list[int]):
    """The row constraint ``policy`` decodes ``conversation`` under, and a note when a grounded policy could not
    ground it (no user text: the schema alone)."""
    if policy.labels:
        return _LabelRow(_answer_trie(tokenizer, policy.labels)), None
    grammar, note = policy.request_grammar(conversation)
    if grammar:
        import llguidance

        return _GrammarRow(_grammar_tokenizer(tokenizer), llguidance.grammar_from("lark", grammar), stop_ids), None
    if policy.json_object:
        return _GrammarRow(_grammar_tokenizer(tokenizer), _json_grammar(policy.json_schema, policy.whitespace_pattern),
                           stop_ids), note
    return _FreeRow(stop_ids), None


# A packed prefill attends over all of a batch's suffix tokens at once (a mask of total x total): batches are cut at
# this many suffix tokens, so long prompts make smaller batches instead of a quadratic mask.
PACKED_TOKENS = 4096


def _batches(order: list[int], lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    batch: list[int] = []
    tokens = 0
    for i in order:
        if batch and (len(batch) == batch_size or tokens + lengths[i] > PACKED_TOKENS):
            yield batch
            batch, tokens = [], 0
        batch.append(i)
        tokens += lengths[i]
    if batch:
        yield batch


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 32,
             batch_size: int = 16, policy: DecodingPolicy | list[DecodingPolicy] | None = None) -> list[Generation]:
    """Greedy answers, in the order of ``conversations``, decoded as ``policy`` says (free text without one; a list:
    one policy per conversation).

    Batches are formed from prompts of similar length (sorted, then restored) and decoded by ``_decode_batch``.
    """
    if not conversations:
        return []
    policies = policy if isinstance(policy, list) else [policy or DecodingPolicy()] * len(conversations)
    stop_ids = [tokenizer.eos_token_id]
    vocab_size = _grammar_tokenizer(tokenizer).vocab_size
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in token_ids]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    # at least one token of every prompt is left to run per row, for its logits
    shared = min(_common_prefix(token_ids), min(lengths) - 1)
    prefix = _SharedPrefix(model, token_ids[0][:shared])
    results: list[Generation | None] = [None] * len(prompts)
    for rows in _batches(order, [n - shared for n in lengths], batch_size):
        began = time.perf_counter()
        constraints, notes = zip(*(_constraint(tokenizer, policies[i], conversations[i], stop_ids) for i in rows))
        outputs, chosen = _decode_batch(model, [token_ids[i][shared:] for i in rows], prefix, list(constraints),
                                        max_new_tokens, vocab_size)
        latency_ms = (time.perf_counter() - began) * 1000
        for i, new, logprobs, note in zip(rows, outputs, chosen, notes):
            new, stopped = _stop_at(new, stop_ids)
            chosen_ids = new + stop_ids[:stopped]
            # a label's tokens after the step that decided it were forced: log-probability 0
            logprobs = (logprobs + [0.0] * len(chosen_ids))[:len(chosen_ids)]
            results[i] = Generation(
                text=tokenizer.decode(new, skip_special_tokens=True).strip(),
                completion_tokens=len(new),
                prompt_tokens=lengths[i],
                finish_reason="stop" if stopped else "length",
                latency_ms=latency_ms,
                token_ids=chosen_ids,
                token_logprobs=logprobs,
                note=note,
            )
    return results


@dataclass
class _Request:
    conversation: list[dict]
    adapter: str | None
    policy: DecodingPolicy
    max_new_tokens: int
    submitted: float
    future: concurrent.futures.Future


# Answers one group of a batch's requests: (adapter, conversations, their policies, max new tokens) -> generations.
AnswerBatch = Callable[[str | None, list[list[dict]], list[DecodingPolicy], int], list[Generation]]


class BatchingEngine:
    """Concurrent requests to one model, answered in micro-batches by ``generate``.

    A batch closes when ``max_batch`` requests are waiting, when no new one has arrived for
    ``quiet_ms``, or ``max_wait_ms`` after its first request, whichever comes first; it then runs as one
    ``generate`` call per (adapter, max tokens) among its requests, each under its own policy. A request's latency runs
    from ``submit`` to its answer, queueing included. Changing the model (loading or unloading an
    adapter) happens inside ``exclusive()``, between batches. A batch that fails fails its requests
    with that error; the engine keeps serving.
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 32, quiet_ms: float = 5.0, max_wait_ms: float = 50.0,
                 answer_batch: AnswerBatch | None = None):
        self.model, self.tokenizer = model, tokenizer
        # How a group of requests is answered: ``generate`` on the model with their adapter, by default; an encoder
        # student's forward pass for the model server of encoder students.
        self._answer_batch = answer_batch or self._generate
        self.max_batch, self.quiet_s, self.max_wait_s = max_batch, quiet_ms / 1000, max_wait_ms / 1000
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._model_lock = threading.Lock()
        self.batches_run = 0  # generate calls made: fewer than requests when requests arrive together
        self._worker = threading.Thread(target=self._serve, name="batching-engine", daemon=True)
        self._worker.start()

    def submit(self, conversation: list[dict], *, adapter: str | None, policy: DecodingPolicy | None = None,
               max_new_tokens: int = 64) -> concurrent.futures.Future:
        """A future of the ``Generation`` for ``conversation`` with ``adapter`` (None: the base model)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Request(conversation, adapter, policy or DecodingPolicy(), max_new_tokens,
                                 time.perf_counter(), future))
        return future

    def answer(self, conversation: list[dict], **options) -> Generation:
        return self.submit(conversation, **options).result()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model between batches, to change it."""
        with self._model_lock:
            yield

    def close(self) -> None:
        """Answer what is queued, then stop; a request submitted after that fails instead of waiting forever."""
        self._queue.put(None)
        self._worker.join(timeout=60)
        while not self._queue.empty():
            late = self._queue.get_nowait()
            if late is not None:
                late.future.set_exception(RuntimeError("the batching engine is closed"))

    def _next_batch(self) -> list[_Request] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = first.submitted + self.max_wait_s
        while len(batch) < self.max_batch:
            wait = min(self.quiet_s, deadline - time.perf_counter())
            try:
                request = self._queue.get(timeout=max(wait, 0)) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                self._queue.put(None)
                break
            batch.append(request)
        return batch

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            groups: dict[tuple, list[_Request]] = {}
            for request in batch:  # each row decodes under its own policy: one group per adapter and token limit
                groups.setdefault((request.adapter, request.max_new_tokens), []).append(request)
            for (adapter, max_new_tokens), requests in groups.items():
                self.batches_run += 1
                try:
                    with self._model_lock:
                        generations = self._answer_batch(adapter, [r.conversation for r in requests],
                                                         [r.policy for r in requests], max_new_tokens)
                except Exception as exc:  # noqa: BLE001 - the callers get the error; the engine serves on
                    for request in requests:
                        request.future.set_exception(exc)
                    continue
                done = time.perf_counter()
                for request, generation in zip(requests, generations):
                    generation.latency_ms = (done - request.submitted) * 1000
                    request.future.set_result(generation)


    def _generate(self, adapter: str | None, conversations: list[list[dict]], policies: list[DecodingPolicy],
                  max_new_tokens: int) -> list[Generation]:
        with using_adapter(self.model, adapter):
            return generate(self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens,
                            batch_size=len(conversations), policy=policies)


@dataclass
class LoadResult:
    """Answers and timings of ``conversations`` sent by ``concurrency`` callers, each waiting for its answer."""

    generations: list[Generation]
    seconds: float

    @property
    def requests_per_s(self) -> float:
        return len(self.generations) / self.seconds if self.seconds else 0.0


def serve_under_load(engine: BatchingEngine, conversations: list[list[dict]], *, concurrency: int,
                     **options) -> LoadResult:
    """Every conversation through ``engine`` from ``concurrency`` callers at once: what the server delivers."""
    generations: list[Generation | None] = [None] * len(conversations)
    pending = iter(range(len(conversations)))
    lock = threading.Lock()

    def caller() -> None:
        while True:
            with lock:
                index = next(pending, None)
            if index is None:
                return
            generations[index] = engine.answer(conversations[index], **options)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for running in [pool.submit(caller) for _ in range(concurrency)]:
            running.result()
    return LoadResult(generations, time.perf_counter() - started)
