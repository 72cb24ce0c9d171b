"""The standard web APIs of js/webapi.js (TextEncoder, TextDecoder, atob, btoa,
structuredClone, queueMicrotask, performance, crypto, DOMException), checked in a real V8
isolate (:class:`madrpc.runtime.Runtime`, about a tenth of a second to build): a script
registers ``run``, which evaluates the JavaScript each test sends and answers its value."""

from __future__ import annotations

import queue
import random
import re
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import orjson
import pytest

from madrpc.engine_payload import ConsoleLine, Reply, StepEntry, encode_step_payload, parse_outbox
from madrpc.errors import ScriptError
from madrpc.runtime import Event, EventKind, Runtime

pytestmark = pytest.mark.timeout(30)

STEP_TIMEOUT_S = 10.0
RUNNER = "madrpc.register('run', (code) => (0, eval)(code));\n"
WEBAPI_JS = (resources.files("madrpc") / "js" / "webapi.js").read_text(encoding="utf-8")
LOADER_JS, IMPLEMENTATION_JS = WEBAPI_JS.split("\n//@@\n")


class JsError(Exception):
    """What the evaluated code threw: its JSON-RPC error (data holds name and message)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.name = str(error.get("data", {}).get("name", ""))
        self.message = str(error["message"])


class Isolate:
    """A Runtime with ``script`` loaded; ``run(code)`` evaluates code in it (flushing for
    timers until the answer comes) and keeps the console lines it printed."""

    def __init__(self, script: str = RUNNER) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.runtime = Runtime(script, "webapi_test.js", self.events.put)
        self.logs: list[str] = []
        self.next_key = 1

    def run(self, code: str, method: str = "run") -> Any:
        key, self.next_key = self.next_key, self.next_key + 1
        body = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": [code], "id": key})
        entry = StepEntry(key, time.time() * 1000 + 60_000, 60_000, 0, body)
        self.runtime.step(encode_step_payload(starts=[entry]))
        while True:
            event = self.events.get(timeout=STEP_TIMEOUT_S)
            if event.kind == EventKind.NOTIFY:
                self.runtime.flush()
                continue
            assert event.kind == EventKind.DONE, event
            replies = []
            for out in parse_outbox(event.data):
                if isinstance(out, ConsoleLine):
                    self.logs.append(out.decode()[3])
                elif isinstance(out, Reply) and out.local == key:
                    replies.append(orjson.loads(b"{" + out.fragment + b"}"))
            if replies:
                if "error" in replies[0]:
                    raise JsError(replies[0]["error"])
                return replies[0]["result"]

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture(scope="module")
def js() -> Iterator[Isolate]:
    isolate = Isolate()
    try:
        yield isolate
    finally:
        isolate.close()


def thrown(js: Isolate, code: str) -> list[Any]:
    """[name, code, is a DOMException, is an Error] of what ``code`` throws."""
    return js.run(f"""(() => {{
        try {{ {code}; }} catch (e) {{
            return [e.name, e.code ?? null, e instanceof DOMException, e instanceof Error];
        }}
        return 'no error';
    }})()""")


# ---------------------------------------------------------------- installation


NAMES = ["DOMException", "TextEncoder", "TextDecoder", "atob", "btoa", "queueMicrotask",
         "performance", "structuredClone", "crypto"]


def test_every_web_api_is_on_global_this_and_there_is_no_network(js: Isolate) -> None:
    kinds = js.run(f"{NAMES}.map((name) => typeof globalThis[name])")
    absent = js.run("['fetch', 'XMLHttpRequest', 'WebSocket', 'Deno', 'process']"
                    ".map((name) => typeof globalThis[name])")

    assert dict(zip(NAMES, kinds, strict=True)) == {
        "DOMException": "function", "TextEncoder": "function", "TextDecoder": "function",
        "atob": "function", "btoa": "function", "queueMicrotask": "function",
        "performance": "object", "structuredClone": "function", "crypto": "object",
    }
    assert absent == ["undefined"] * 5


def test_the_apis_are_compiled_on_first_use_and_a_script_may_replace_them_before() -> None:
    isolate = Isolate(RUNNER + "globalThis.btoa = 'mine';\n")
    try:
        before = isolate.run("typeof Object.getOwnPropertyDescriptor(globalThis, 'atob').get")
        isolate.run("atob('YQ==')")
        after = isolate.run("['atob', 'crypto'].map((name) =>"
                            " typeof Object.getOwnPropertyDescriptor(globalThis, name).value)")
        mine = isolate.run("btoa")
    finally:
        isolate.close()
    assert before == "function"            # a getter: nothing compiled yet
    assert after == ["function", "object"]  # all plain values once one was used
    assert mine == "mine"


def test_the_loader_leaves_a_global_the_engine_already_has_alone() -> None:
    script = RUNNER + (
        "delete globalThis.atob;\n"
        "globalThis.queueMicrotask = 'native';\n"
        f"({LOADER_JS})('{'ab' * 32}', {orjson.dumps(IMPLEMENTATION_JS).decode()});\n"
    )
    isolate = Isolate(script)
    try:
        assert isolate.run("[typeof atob, queueMicrotask]") == ["function", "native"]
    finally:
        isolate.close()


# ---------------------------------------------------------------- TextEncoder, TextDecoder


def test_text_encoder_and_decoder_round_trip_accents_and_emoji(js: Isolate) -> None:
    encoded = js.run("Array.from(new TextEncoder().encode('héllo 🌍'))")
    decoded = js.run("new TextDecoder().decode(new TextEncoder().encode('héllo 🌍'))")

    assert bytes(encoded) == "héllo 🌍".encode()
    assert decoded == "héllo 🌍"
    assert js.run("[new TextEncoder().encoding, new TextDecoder().encoding]") == ["utf-8"] * 2
    assert js.run("new TextEncoder().encode().length") == 0


def test_text_encoder_writes_a_lone_surrogate_as_the_replacement_character(js: Isolate) -> None:
    assert bytes(js.run("Array.from(new TextEncoder().encode('a\\ud800b\\udc00'))")) == (
        "a\ufffdb\ufffd".encode()
    )


def test_encode_into_writes_only_the_whole_characters_that_fit(js: Isolate) -> None:
    assert js.run("""(() => {
        const into = new Uint8Array(5);
        const outcome = new TextEncoder().encodeInto('ab🌍c', into);
        return [outcome.read, outcome.written, Array.from(into)];
    })()""") == [2, 2, [97, 98, 0, 0, 0]]
    assert js.run("new TextEncoder().encodeInto('é🌍', new Uint8Array(6))") == {
        "read": 3, "written": 6,
    }
    assert thrown(js, "new TextEncoder().encodeInto('a', [0])") == [
        "TypeError", None, False, True,
    ]


INVALID_UTF8 = [
    b"\xff", b"\xc0\x80", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x8c", b"\xf0\x9f\x8cA", b"\xe2\x82", b"a\x80b", b"\xc3\xc3\xa9",
]


def test_text_decoder_replaces_invalid_sequences_as_python_does(js: Isolate) -> None:
    rng = random.Random(7)
    samples = INVALID_UTF8 + [
        bytes(rng.choice(b"\x00\x41\x7f\x80\xbf\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff")
              for _ in range(rng.randrange(1, 12)))
        for _ in range(300)
    ]

    decoded = js.run(f"{[list(s) for s in samples]}"
                     ".map((b) => new TextDecoder().decode(new Uint8Array(b)))")

    # CPython's decoder also replaces each maximal invalid subpart with one U+FFFD.
    assert decoded == [s.decode("utf-8", "replace") for s in samples]


def test_text_decoder_fatal_throws_a_type_error_on_invalid_input(js: Isolate) -> None:
    assert thrown(js, "new TextDecoder('utf-8', {fatal: true})"
                      ".decode(new Uint8Array([0x61, 0xc3]))") == ["TypeError", None, False, True]
    assert js.run("new TextDecoder('utf-8', {fatal: true}).decode(new Uint8Array([0xc3, 0xa9]))"
                  ) == "é"
    assert js.run("[new TextDecoder('utf8', {fatal: true}).fatal, new TextDecoder().fatal]") == [
        True, False,
    ]


def test_text_decoder_drops_a_leading_bom_unless_told_to_keep_it(js: Isolate) -> None:
    bom_a = "new Uint8Array([0xef, 0xbb, 0xbf, 0x41])"

    assert js.run(f"new TextDecoder().decode({bom_a})") == "A"
    assert js.run(f"new TextDecoder('utf-8', {{ignoreBOM: true}}).decode({bom_a})") == "\ufeffA"
    assert js.run(f"(() => {{ const d = new TextDecoder(); return [d.decode({bom_a}),"
                  f" d.decode({bom_a})]; }})()") == ["A", "A"]   # each decode starts anew


def test_text_decoder_streams_characters_split_across_chunks(js: Isolate) -> None:
    text = "a é € 🌍 \ufffd end"
    data = list(text.encode()) + [0xF0, 0x9F]   # ends inside a character
    splits = sorted(random.Random(3).sample(range(1, len(data)), 8))

    pieces = js.run(f"""(() => {{
        const bytes = new Uint8Array({data});
        const cuts = [0, ...{splits}, bytes.length];
        const decoder = new TextDecoder();
        const out = [];
        for (let i = 0; i + 1 < cuts.length; i++) {{
            out.push(decoder.decode(bytes.subarray(cuts[i], cuts[i + 1]), {{stream: true}}));
        }}
        out.push(decoder.decode());   // the end: the unfinished character is an error
        return out;
    }})()""")

    assert "".join(pieces) == text + "\ufffd"


def test_text_decoder_reads_buffers_views_and_data_views(js: Isolate) -> None:
    assert js.run("""(() => {
        const bytes = new TextEncoder().encode('hello world');
        const d = new TextDecoder();
        return [d.decode(bytes.buffer), d.decode(new DataView(bytes.buffer, 6)),
                d.decode(bytes.subarray(0, 5)), d.decode(new Uint16Array(bytes.buffer, 0, 2)),
                d.decode(), d.decode(new ArrayBuffer(0))];
    })()""") == ["hello world", "world", "hello", "hell", "", ""]


def test_text_decoder_refuses_other_encodings_and_values_that_are_not_bytes(js: Isolate) -> None:
    assert thrown(js, "new TextDecoder('latin1')") == ["RangeError", None, False, True]
    assert thrown(js, "new TextDecoder().decode('text')") == ["TypeError", None, False, True]
    assert thrown(js, "new TextDecoder().decode(null)") == ["TypeError", None, False, True]
    assert js.run("new TextDecoder(' UTF-8 ').encoding") == "utf-8"


# ---------------------------------------------------------------- atob, btoa


def test_btoa_and_atob_round_trip_latin1_and_atob_forgives_whitespace(js: Isolate) -> None:
    latin1 = "".join(map(chr, range(256)))

    assert js.run(f"atob(btoa({orjson.dumps(latin1).decode()}))") == latin1
    assert js.run("[btoa(''), btoa('a'), btoa('ab'), btoa('abc')]") == [
        "", "YQ==", "YWI=", "YWJj",
    ]
    assert js.run("[atob(' YW\\nJj\\t'), atob('YQ'), atob('YWI'), atob('YR==')]") == [
        "abc", "a", "ab", "a",
    ]


def test_btoa_refuses_characters_beyond_latin1(js: Isolate) -> None:
    assert thrown(js, "btoa('€')") == ["InvalidCharacterError", 5, True, True]
    assert thrown(js, "btoa()") == ["TypeError", None, False, True]


@pytest.mark.parametrize("text", ["a", "abcde", "ab=", "a===", "ab=c", "Y*==", "é", "YQ==="])
def test_atob_refuses_text_that_is_not_base64(js: Isolate, text: str) -> None:
    assert thrown(js, f"atob({orjson.dumps(text).decode()})") == [
        "InvalidCharacterError", 5, True, True,
    ]


# ---------------------------------------------------------------- queueMicrotask, performance


def test_queue_microtask_runs_after_the_current_code_before_timers(js: Isolate) -> None:
    assert js.run("""new Promise((resolve) => {
        const order = [];
        setTimeout(() => { order.push('timer'); resolve(order); }, 0);
        queueMicrotask(() => order.push('microtask'));
        Promise.resolve().then(() => order.push('promise'));
        order.push('code');
    })""") == ["code", "microtask", "promise", "timer"]


def test_an_error_in_a_microtask_is_logged_and_the_request_still_answers(js: Isolate) -> None:
    answer = js.run("queueMicrotask(() => { throw new Error('lost?'); }); 'answered'")

    assert answer == "answered"
    assert any(line.startswith("Uncaught Error: lost?") for line in js.logs)
    assert thrown(js, "queueMicrotask('not a function')") == ["TypeError", None, False, True]


def test_performance_now_counts_milliseconds_from_time_origin_and_never_goes_back(
    js: Isolate,
) -> None:
    origin, first, ticks_ok, waited = js.run("""(() => {
        const first = performance.now();
        let previous = first, ok = true;
        const until = Date.now() + 20;
        while (Date.now() < until) {
            const t = performance.now();
            if (t < previous) ok = false;
            previous = t;
        }
        return [performance.timeOrigin, first, ok, performance.now() - first];
    })()""")

    assert abs(origin - time.time() * 1000) < 60_000
    assert 0 <= first < 60_000
    assert ticks_ok
    assert 19 <= waited < 10_000
    assert js.run("JSON.stringify(performance) === JSON.stringify({timeOrigin:"
                  " performance.timeOrigin})") is True


# ---------------------------------------------------------------- structuredClone


def test_structured_clone_copies_a_cycle_and_shared_references(js: Isolate) -> None:
    assert js.run("""(() => {
        const shared = {n: 1};
        const root = {a: shared, b: [shared], name: 'root'};
        root.self = root;
        const copy = structuredClone(root);
        return [copy !== root, copy.self === copy, copy.a === copy.b[0], copy.a !== shared,
                copy.name, copy.a.n];
    })()""") == [True, True, True, True, "root", 1]


def test_structured_clone_copies_maps_sets_dates_regexps_and_primitive_wrappers(
    js: Isolate,
) -> None:
    assert js.run("""(() => {
        const key = {k: 1};
        const c = structuredClone({
            map: new Map([[key, new Set([1, 'two', key])]]), date: new Date(86400000),
            re: /a+b/gi, big: 12345678901234567890n, wrapped: Object('text'),
            nested: [undefined, null, NaN, -0, [1, [2, [3]]]], sparse: [1, , 3],
        });
        const [[k, set]] = c.map;
        return [c.map instanceof Map, k.k, set.has(k), [...set].length, set.has('two'),
                c.date instanceof Date && c.date.getTime(), c.re.source, c.re.flags,
                String(c.big), typeof c.wrapped, String(c.wrapped),
                JSON.stringify(c.nested), Object.is(c.nested[3], -0), 1 in c.sparse];
    })()""") == [True, 1, True, 3, True, 86400000, "a+b", "gi", "12345678901234567890",
                 "object", "text", "[null,null,null,0,[1,[2,[3]]]]", True, False]


def test_structured_clone_copies_buffers_and_keeps_views_on_one_buffer(js: Isolate) -> None:
    assert js.run("""(() => {
        const bytes = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
        const c = structuredClone({bytes, words: new Uint16Array(bytes.buffer, 2, 2),
                                   view: new DataView(bytes.buffer, 4),
                                   floats: new Float64Array([1.5])});
        bytes[0] = 99;
        return [c.bytes.buffer !== bytes.buffer, c.bytes.buffer === c.words.buffer,
                c.words.buffer === c.view.buffer, Array.from(c.bytes), c.words.byteOffset,
                c.words.length, c.view.getUint8(0), c.floats[0], c.words instanceof Uint16Array];
    })()""") == [True, True, True, [1, 2, 3, 4, 5, 6, 7, 8], 2, 2, 5, 1.5, True]


def test_structured_clone_keeps_an_errors_type_message_and_cause(js: Isolate) -> None:
    assert js.run("""(() => {
        const c = structuredClone(new RangeError('too far', {cause: {why: 1}}));
        const custom = new Error('mine');
        custom.name = 'CustomError';
        const d = structuredClone(new DOMException('no', 'AbortError'));
        return [c instanceof RangeError, c.message, c.cause.why, structuredClone(custom).name,
                d instanceof DOMException, d.name, d.code];
    })()""") == [True, "too far", 1, "Error", True, "AbortError", 20]


@pytest.mark.parametrize("value", [
    "() => 1", "Symbol('s')", "{f() {}}", "[1, () => 2]", "new Map([[1, Symbol()]])",
    "Promise.resolve()", "new WeakMap()",
])
def test_structured_clone_refuses_functions_and_symbols_with_data_clone_error(
    js: Isolate, value: str,
) -> None:
    assert thrown(js, f"structuredClone({value})") == ["DataCloneError", 25, True, True]


def test_structured_clone_transfer_detaches_the_buffer_only_when_the_clone_succeeds(
    js: Isolate,
) -> None:
    assert js.run("""(() => {
        const moved = new Uint8Array([1, 2, 3]).buffer;
        const copy = structuredClone({moved}, {transfer: [moved]});
        const kept = new ArrayBuffer(4);
        let failed = null;
        try { structuredClone({kept, f: () => 1}, {transfer: [kept]}); }
        catch (e) { failed = e.name; }
        return [moved.detached, Array.from(new Uint8Array(copy.moved)), failed, kept.detached];
    })()""") == [True, [1, 2, 3], "DataCloneError", False]
    assert thrown(js, "structuredClone(1, {transfer: [new Uint8Array(1)]})") == [
        "DataCloneError", 25, True, True,
    ]
    assert thrown(js, "const b = new ArrayBuffer(1); structuredClone(b, {transfer: [b, b]})") == [
        "DataCloneError", 25, True, True,
    ]
    assert thrown(js, "structuredClone()") == ["TypeError", None, False, True]


def test_structured_clone_never_sets_a_prototype_through_a_proto_key(js: Isolate) -> None:
    assert js.run("""(() => {
        const copy = structuredClone(JSON.parse('{"__proto__": {"polluted": true}}'));
        return [Object.getPrototypeOf(copy) === Object.prototype, copy.polluted === undefined,
                Object.keys(copy)];
    })()""") == [True, True, ["__proto__"]]


# ---------------------------------------------------------------- crypto


UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_random_uuid_is_an_rfc_4122_version_4_uuid_and_never_repeats(js: Isolate) -> None:
    uuids = js.run("Array.from({length: 2000}, () => crypto.randomUUID())")

    assert all(UUID4.match(uuid) for uuid in uuids)
    assert len(set(uuids)) == len(uuids)


def test_get_random_values_fills_integer_arrays_in_place_and_returns_them(js: Isolate) -> None:
    assert js.run("""(() => {
        const kinds = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array,
                       Int32Array, Uint32Array, BigInt64Array, BigUint64Array];
        return kinds.map((Kind) => {
            const array = new Kind(64);
            return crypto.getRandomValues(array) === array && array.some((v) => v != 0);
        });
    })()""") == [True] * 9
    assert js.run("crypto.getRandomValues(new Uint8Array(65536)).length") == 65536
    assert js.run("crypto.getRandomValues(new Uint8Array(0)).length") == 0


def test_get_random_values_bytes_are_uniform(js: Isolate) -> None:
    counts = js.run("""(() => {
        const counts = new Array(256).fill(0);
        for (let i = 0; i < 8; i++) {
            for (const b of crypto.getRandomValues(new Uint8Array(65536))) counts[b]++;
        }
        return counts;
    })()""")

    expected = 8 * 65536 / 256
    chi_square = sum((count - expected) ** 2 / expected for count in counts)
    assert chi_square < 400   # 255 degrees of freedom: p < 1e-8 for a fair source


def test_get_random_values_refuses_floats_data_views_and_more_than_65536_bytes(
    js: Isolate,
) -> None:
    # WebCrypto (and the web-platform tests): TypeMismatchError for a non-integer array,
    # QuotaExceededError past 65536 bytes, TypeError for what is no ArrayBufferView.
    for array in ("new Float32Array(4)", "new Float64Array(4)", "new DataView(new ArrayBuffer(4))",
                  "new Float32Array(65537)"):
        assert thrown(js, f"crypto.getRandomValues({array})") == [
            "TypeMismatchError", 17, True, True,
        ], array
    assert thrown(js, "crypto.getRandomValues(new Uint8Array(65537))") == [
        "QuotaExceededError", 22, True, True,
    ]
    assert thrown(js, "crypto.getRandomValues(new Uint32Array(16385))") == [
        "QuotaExceededError", 22, True, True,
    ]
    for value in ("[1, 2]", "new ArrayBuffer(4)", ""):
        assert thrown(js, f"crypto.getRandomValues({value})") == [
            "TypeError", None, False, True,
        ], value


def test_two_contexts_draw_different_random_values() -> None:
    draws = []
    for _ in range(2):
        isolate = Isolate()
        try:
            draws.append(isolate.run("Array.from(crypto.getRandomValues(new Uint8Array(32)))"))
        finally:
            isolate.close()
    assert draws[0] != draws[1]
    assert all(any(draw) for draw in draws)


def internals(seed_hex: str) -> Isolate:
    """An isolate whose script holds the internals of an implementation seeded with
    ``seed_hex`` (the globals stay the runtime's own)."""
    return Isolate(RUNNER + f"globalThis.internals = ({IMPLEMENTATION_JS})("
                            f"'{seed_hex}', Date.now(), Date.now).internals;\n")


def test_the_chacha20_block_is_the_one_of_rfc_8439() -> None:
    isolate = internals("00" * 32)
    try:
        block = isolate.run("Array.from(internals.chacha20Block(Uint8Array.from("
                            "{length: 32}, (_, i) => i), 1, new Uint8Array("
                            "[0, 0, 0, 9, 0, 0, 0, 0x4a, 0, 0, 0, 0])))")
    finally:
        isolate.close()
    assert bytes(block).hex() == (   # RFC 8439, section 2.3.2
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )


def test_the_generator_is_chacha20_keyed_by_the_seed_and_rekeyed_every_256_bytes() -> None:
    isolate = internals(bytes(range(32)).hex())
    try:
        stream = bytes(isolate.run("Array.from(internals.randomBytes(300))"))
    finally:
        isolate.close()
    # Computed with `openssl enc -chacha20` (key = the seed, counter and nonce 0): the
    # first 256 bytes of keystream give the next key (32 bytes) and 224 bytes of output;
    # then the same with the next key.
    assert stream[:16].hex() == "2b23cce7a26023ab3f0eef693ac87f64"
    assert stream[224:240].hex() == "2d41a59c90e41a8e7a4dccaa1c460699"


def test_a_seed_that_is_not_64_hex_digits_is_refused() -> None:
    with pytest.raises(ScriptError, match="64 hex digits"):
        internals("00" * 16)


# ---------------------------------------------------------------- DOMException


def test_dom_exception_is_an_error_with_a_name_a_message_and_a_legacy_code(js: Isolate) -> None:
    assert js.run("""(() => {
        const e = new DOMException('gone', 'NotFoundError');
        const plain = new DOMException();
        return [e instanceof Error, e.name, e.message, e.code, String(e),
                e.stack.split('\\n')[0], plain.name, plain.message, plain.code];
    })()""") == [True, "NotFoundError", "gone", 8, "NotFoundError: gone", "NotFoundError: gone",
                 "Error", "", 0]
