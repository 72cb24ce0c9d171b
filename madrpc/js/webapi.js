// Standard web APIs for scripts, set up in every V8 context just before bootstrap.js.
//
// V8 alone is ECMAScript only: the APIs every other JavaScript runtime (browsers, Node,
// Deno, Workers) also provides are added here, on globalThis, each only where the engine
// does not already have it (V8 14.4 as embedded by mini-racer has none of them):
//   TextEncoder, TextDecoder (utf-8), atob, btoa, structuredClone, queueMicrotask,
//   performance.now() / performance.timeOrigin, crypto.getRandomValues,
//   crypto.randomUUID, and DOMException (the error class several of them throw).
// There is no fetch, no file system and no other way out of the context, on purpose: a
// script computes on the data its calls bring and answers; the grid moves the data.
//
// The file has two parts. Compiling and running the implementation (below the `//@@`
// line) costs about 2 ms, where a whole context takes 6-9 ms to build, and most
// scripts never use these APIs: so runtime.py evaluates only the loader (the first
// part), called with 64 hex digits of os.urandom (a new seed for every context, fresh
// contexts included) and the implementation's text as a string. The loader puts a getter
// on globalThis for each missing name, as Node.js does for its lazy globals; the first
// one read compiles the implementation and replaces them all with plain values.
//
// Why crypto does not use Math.random: V8's Math.random is xorshift128+, seeded once per
// context and not meant for secrets; a few of its outputs reveal its state and so every
// later "random" UUID or token. crypto draws from a ChaCha20 keystream (RFC 8439) keyed
// with the seed and rekeyed from its own output every 256 bytes (the fast-key-erasure
// generator of OpenBSD's arc4random). The seed itself stays in the context's memory, in
// the source text of this runtime: that hides nothing from whoever can read the
// process's memory, who could read the generator's state anyway.
(function (seedHex, implementation) {
  'use strict';
  const NAMES = ['DOMException', 'TextEncoder', 'TextDecoder', 'atob', 'btoa',
                 'queueMicrotask', 'performance', 'structuredClone', 'crypto'];
  const {defineProperty, getOwnPropertyDescriptor} = Object;
  const compile = eval;   // indirect: the implementation runs in the global scope
  const dateNow = Date.now;
  const timeOrigin = dateNow();
  const nativeDOMException = 'DOMException' in globalThis ? globalThis.DOMException : undefined;
  const getters = new Set();
  let apis = null;

  function install(name, value) {
    defineProperty(globalThis, name,
                   {value, writable: true, enumerable: false, configurable: true});
  }

  // Compile the implementation; every name still served by its getter becomes a value.
  function load() {
    if (apis === null) {
      apis = compile(implementation + '\n//# sourceURL=madrpc-runtime.js\n')(
        seedHex, timeOrigin, dateNow, nativeDOMException).globals;
      for (const name of NAMES) {
        const descriptor = getOwnPropertyDescriptor(globalThis, name);
        if (descriptor !== undefined && getters.has(descriptor.get)) install(name, apis[name]);
      }
    }
    return apis;
  }

  for (const name of NAMES) {
    if (name in globalThis) continue;   // the engine has it: keep the native one
    const get = () => load()[name];
    getters.add(get);
    defineProperty(globalThis, name, {
      get, set: (value) => install(name, value), enumerable: false, configurable: true,
    });
  }
})
//@@
(function (seedHex, timeOrigin, dateNow, nativeDOMException) {
  'use strict';
  if (!/^[0-9a-f]{64}$/.test(seedHex)) throw new Error('webapi: the seed must be 64 hex digits');
  const globals = {};   // name -> value, for the loader to install

  // Intrinsics, taken once, when a script first uses one of these APIs (a script that
  // replaces them afterwards does not change how the APIs behave).
  const {defineProperty, getOwnPropertyDescriptor, getPrototypeOf, keys: ownKeys} = Object;
  const objectToString = Object.prototype.toString;
  const hasOwn = Object.hasOwn;
  const isArray = Array.isArray;
  const isView = ArrayBuffer.isView;
  const fromCharCode = String.fromCharCode;
  const getter = (proto, name) => getOwnPropertyDescriptor(proto, name).get;
  const typedArrayTag = getter(getPrototypeOf(Uint8Array.prototype), Symbol.toStringTag);
  const bufferByteLength = getter(ArrayBuffer.prototype, 'byteLength');
  const sharedByteLength = getter(SharedArrayBuffer.prototype, 'byteLength');
  const bufferSlice = ArrayBuffer.prototype.slice;
  const bufferTransfer = ArrayBuffer.prototype.transfer;
  const mapSize = getter(Map.prototype, 'size');
  const mapForEach = Map.prototype.forEach;
  const mapSet = Map.prototype.set;
  const setSize = getter(Set.prototype, 'size');
  const setForEach = Set.prototype.forEach;
  const setAdd = Set.prototype.add;
  const dateGetTime = Date.prototype.getTime;
  const regexpSource = getter(RegExp.prototype, 'source');
  const regexpFlags = getter(RegExp.prototype, 'flags');
  const isError = Error.isError ?? ((value) => value instanceof Error);
  const promiseThen = Promise.prototype.then;
  const resolved = Promise.resolve();

  function requireArgument(count, api) {
    if (count === 0) {
      throw new TypeError(api + ': 1 argument required, but only 0 present.');
    }
  }

  // ------------------------------------------------------------------ DOMException

  const DOM_CODES = new Map([
    ['IndexSizeError', 1], ['HierarchyRequestError', 3], ['WrongDocumentError', 4],
    ['InvalidCharacterError', 5], ['NoModificationAllowedError', 7], ['NotFoundError', 8],
    ['NotSupportedError', 9], ['InvalidStateError', 11], ['SyntaxError', 12],
    ['InvalidModificationError', 13], ['NamespaceError', 14], ['InvalidAccessError', 15],
    ['TypeMismatchError', 17], ['SecurityError', 18], ['NetworkError', 19],
    ['AbortError', 20], ['URLMismatchError', 21], ['QuotaExceededError', 22],
    ['TimeoutError', 23], ['InvalidNodeTypeError', 24], ['DataCloneError', 25],
  ]);

  class DOMException extends Error {
    constructor(message = '', name = 'Error') {
      super(message);
      defineProperty(this, 'name', {value: String(name), writable: true, configurable: true});
    }
    get code() { return DOM_CODES.get(this.name) ?? 0; }
  }
  const DOMError = nativeDOMException ?? DOMException;   // the one scripts see
  globals.DOMException = DOMException;
  const domError = (message, name) => new DOMError(message, name);

  // ------------------------------------------------------------------ bytes <-> strings

  const CHUNK = 8192;   // code units per String.fromCharCode call

  // The string of code units (or Latin-1 bytes) units[start, end).
  function unitsToString(units, start, end) {
    if (end - start <= CHUNK) return fromCharCode.apply(null, units.subarray(start, end));
    let text = '';
    for (let at = start; at < end; at += CHUNK) {
      text += fromCharCode.apply(null, units.subarray(at, Math.min(at + CHUNK, end)));
    }
    return text;
  }

  // The bytes of an ArrayBuffer, a SharedArrayBuffer or a view (TypedArray, DataView);
  // a detached buffer has none.
  function bytesOf(input, api) {
    if (isView(input)) {
      return input.byteLength === 0 ? new Uint8Array(0)
        : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    }
    let length = -1;
    try { length = bufferByteLength.call(input); } catch (_) { /* not an ArrayBuffer */ }
    if (length === -1) {
      try { length = sharedByteLength.call(input); } catch (_) { /* nor a shared one */ }
    }
    if (length === -1) {
      throw new TypeError(api + ": parameter 1 is not of type '(ArrayBuffer or ArrayBufferView)'");
    }
    return length === 0 ? new Uint8Array(0) : new Uint8Array(input);
  }

  // ------------------------------------------------------------------ TextEncoder

  // UTF-8 of `text` into `dest` from index 0, whole characters only while they fit; a
  // lone surrogate is encoded as U+FFFD. Returns [code units read, bytes written].
  function encodeUtf8(text, dest) {
    const length = text.length;
    const room = dest.length;
    let read = 0;
    let written = 0;
    while (read < length) {
      let c = text.charCodeAt(read);
      let units = 1;
      if (c < 0x80) {
        if (written === room) break;
        dest[written++] = c;
        read++;
        continue;
      }
      if (c >= 0xD800 && c <= 0xDFFF) {
        const next = c <= 0xDBFF && read + 1 < length ? text.charCodeAt(read + 1) : 0;
        if (next >= 0xDC00 && next <= 0xDFFF) {
          c = 0x10000 + ((c - 0xD800) << 10) + (next - 0xDC00);
          units = 2;
        } else {
          c = 0xFFFD;
        }
      }
      if (c < 0x800) {
        if (written + 2 > room) break;
        dest[written++] = 0xC0 | (c >> 6);
      } else if (c < 0x10000) {
        if (written + 3 > room) break;
        dest[written++] = 0xE0 | (c >> 12);
        dest[written++] = 0x80 | ((c >> 6) & 0x3F);
      } else {
        if (written + 4 > room) break;
        dest[written++] = 0xF0 | (c >> 18);
        dest[written++] = 0x80 | ((c >> 12) & 0x3F);
        dest[written++] = 0x80 | ((c >> 6) & 0x3F);
      }
      dest[written++] = 0x80 | (c & 0x3F);
      read += units;
    }
    return [read, written];
  }

  function utf8Length(text) {
    const length = text.length;
    let bytes = length;
    for (let i = 0; i < length; i++) {
      const c = text.charCodeAt(i);
      if (c < 0x80) continue;
      if (c < 0x800) {
        bytes += 1;
      } else if (c >= 0xD800 && c <= 0xDBFF && i + 1 < length &&
                 (text.charCodeAt(i + 1) & 0xFC00) === 0xDC00) {
        bytes += 2;   // 4 bytes for the 2 code units of the pair
        i++;
      } else {
        bytes += 2;   // 3 bytes (a lone surrogate becomes U+FFFD, also 3)
      }
    }
    return bytes;
  }

  class TextEncoder {
    get encoding() { return 'utf-8'; }

    encode(input = '') {
      const text = String(input);
      const bytes = new Uint8Array(utf8Length(text));
      encodeUtf8(text, bytes);
      return bytes;
    }

    encodeInto(source, destination) {
      if (typedArrayTag.call(destination) !== 'Uint8Array') {
        throw new TypeError("TextEncoder.encodeInto: parameter 2 is not of type 'Uint8Array'");
      }
      const [read, written] = encodeUtf8(String(source), destination);
      return {read, written};
    }
  }
  defineProperty(TextEncoder.prototype, Symbol.toStringTag,
                 {value: 'TextEncoder', configurable: true});
  globals.TextEncoder = TextEncoder;

  // ------------------------------------------------------------------ TextDecoder

  const UTF8_LABELS = new Set(['unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8',
                               'utf-8', 'utf8', 'x-unicode20utf8']);

  // The WHATWG Encoding standard's UTF-8 decoder: every maximal invalid subsequence
  // becomes one U+FFFD (or, when fatal, a TypeError); a sequence split across stream
  // chunks waits in the decoder's state for its next bytes.
  class TextDecoder {
    #fatal;
    #ignoreBOM;
    #streaming = false;   // the last decode() had {stream: true}: keep the state
    #bomSeen = false;
    #codePoint = 0;
    #needed = 0;
    #seen = 0;
    #lower = 0x80;
    #upper = 0xBF;

    constructor(label = 'utf-8', options = undefined) {
      const name = String(label).replace(/^[\t\n\f\r ]+|[\t\n\f\r ]+$/g, '').toLowerCase();
      if (!UTF8_LABELS.has(name)) {
        throw new RangeError("TextDecoder: the encoding '" + label +
                             "' is not supported here (only utf-8 is)");
      }
      const opts = options ?? {};
      this.#fatal = Boolean(opts.fatal);
      this.#ignoreBOM = Boolean(opts.ignoreBOM);
    }

    get encoding() { return 'utf-8'; }
    get fatal() { return this.#fatal; }
    get ignoreBOM() { return this.#ignoreBOM; }

    decode(input = undefined, options = undefined) {
      const bytes = input === undefined ? new Uint8Array(0) : bytesOf(input, 'TextDecoder.decode');
      const stream = Boolean((options ?? {}).stream);
      if (!this.#streaming) {
        this.#reset();
        this.#bomSeen = false;
      }
      this.#streaming = stream;
      const units = new Uint16Array(bytes.length + 2);
      const count = this.#run(bytes, units, stream);
      let start = 0;
      if (count > 0 && !this.#bomSeen) {
        this.#bomSeen = true;
        if (!this.#ignoreBOM && units[0] === 0xFEFF) start = 1;
      }
      return unitsToString(units, start, count);
    }

    #reset() {
      this.#codePoint = this.#needed = this.#seen = 0;
      this.#lower = 0x80;
      this.#upper = 0xBF;
    }

    #error() {
      if (this.#fatal) {
        this.#reset();
        this.#streaming = false;
        throw new TypeError('TextDecoder.decode: the data is not valid utf-8');
      }
      return 0xFFFD;
    }

    // Decodes bytes into units (room for bytes.length + 2); returns how many it wrote.
    #run(bytes, units, stream) {
      const length = bytes.length;
      let codePoint = this.#codePoint;
      let needed = this.#needed;
      let seen = this.#seen;
      let lower = this.#lower;
      let upper = this.#upper;
      let n = 0;
      for (let i = 0; i < length; i++) {
        const b = bytes[i];
        if (needed === 0) {
          if (b < 0x80) {
            units[n++] = b;
          } else if (b >= 0xC2 && b <= 0xDF) {
            needed = 1;
            codePoint = b & 0x1F;
          } else if (b >= 0xE0 && b <= 0xEF) {
            if (b === 0xE0) lower = 0xA0;
            else if (b === 0xED) upper = 0x9F;
            needed = 2;
            codePoint = b & 0x0F;
          } else if (b >= 0xF0 && b <= 0xF4) {
            if (b === 0xF0) lower = 0x90;
            else if (b === 0xF4) upper = 0x8F;
            needed = 3;
            codePoint = b & 0x07;
          } else {
            units[n++] = this.#error();
          }
          continue;
        }
        if (b < lower || b > upper) {
          codePoint = needed = seen = 0;
          lower = 0x80;
          upper = 0xBF;
          units[n++] = this.#error();
          i--;   // the byte may start the next sequence: read it again
          continue;
        }
        lower = 0x80;
        upper = 0xBF;
        codePoint = (codePoint << 6) | (b & 0x3F);
        if (++seen === needed) {
          if (codePoint > 0xFFFF) {
            codePoint -= 0x10000;
            units[n++] = 0xD800 | (codePoint >> 10);
            units[n++] = 0xDC00 | (codePoint & 0x3FF);
          } else {
            units[n++] = codePoint;
          }
          codePoint = needed = seen = 0;
        }
      }
      this.#codePoint = codePoint;
      this.#needed = needed;
      this.#seen = seen;
      this.#lower = lower;
      this.#upper = upper;
      if (!stream && needed !== 0) {   // the input ended inside a sequence
        this.#reset();
        units[n++] = this.#error();
      }
      return n;
    }
  }
  defineProperty(TextDecoder.prototype, Symbol.toStringTag,
                 {value: 'TextDecoder', configurable: true});
  globals.TextDecoder = TextDecoder;

  // ------------------------------------------------------------------ atob, btoa

  const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  let base64Values = null;   // char code -> 6-bit value, -1 for others (built on first atob)

  function btoa(data) {
    requireArgument(arguments.length, 'btoa');
    const text = String(data);
    const length = text.length;
    const out = new Uint8Array(Math.ceil(length / 3) * 4);
    let n = 0;
    for (let i = 0; i < length; i += 3) {
      const a = text.charCodeAt(i);
      const b = i + 1 < length ? text.charCodeAt(i + 1) : 0;
      const c = i + 2 < length ? text.charCodeAt(i + 2) : 0;
      if ((a | b | c) > 0xFF) {
        throw domError('btoa: the string to be encoded contains characters outside of the ' +
                       'Latin1 range.', 'InvalidCharacterError');
      }
      out[n++] = BASE64.charCodeAt(a >> 2);
      out[n++] = BASE64.charCodeAt(((a & 3) << 4) | (b >> 4));
      out[n++] = i + 1 < length ? BASE64.charCodeAt(((b & 15) << 2) | (c >> 6)) : 61;
      out[n++] = i + 2 < length ? BASE64.charCodeAt(c & 63) : 61;
    }
    return unitsToString(out, 0, n);
  }

  // The forgiving-base64 decode of the HTML standard: ASCII whitespace is ignored, padding
  // is optional but must be right when present.
  function atob(data) {
    requireArgument(arguments.length, 'atob');
    if (base64Values === null) {
      base64Values = new Int8Array(128).fill(-1);
      for (let i = 0; i < 64; i++) base64Values[BASE64.charCodeAt(i)] = i;
    }
    const text = String(data).replace(/[\t\n\f\r ]+/g, '');
    let length = text.length;
    if (length % 4 === 0 && length > 0 && text.charCodeAt(length - 1) === 61) {
      length -= text.charCodeAt(length - 2) === 61 ? 2 : 1;
    }
    const invalid = () => domError('atob: the string to be decoded is not correctly encoded.',
                                   'InvalidCharacterError');
    if (length % 4 === 1) throw invalid();
    const out = new Uint8Array((length * 3) >> 2);
    let n = 0;
    let bits = 0;
    let count = 0;
    for (let i = 0; i < length; i++) {
      const c = text.charCodeAt(i);
      const value = c < 128 ? base64Values[c] : -1;
      if (value < 0) throw invalid();
      bits = (bits << 6) | value;
      if (++count === 4) {
        out[n++] = bits >> 16;
        out[n++] = (bits >> 8) & 0xFF;
        out[n++] = bits & 0xFF;
        bits = count = 0;
      }
    }
    if (count === 2) {
      out[n++] = bits >> 4;
    } else if (count === 3) {
      out[n++] = bits >> 10;
      out[n++] = (bits >> 2) & 0xFF;
    }
    return unitsToString(out, 0, n);
  }
  globals.btoa = btoa;
  globals.atob = atob;

  // ------------------------------------------------------------------ queueMicrotask

  function queueMicrotask(callback) {
    if (typeof callback !== 'function') {
      throw new TypeError("queueMicrotask: parameter 1 is not of type 'Function'");
    }
    promiseThen.call(resolved, () => {
      try {
        callback();
      } catch (e) {   // reported as an uncaught error, not lost as a rejected promise
        const log = globalThis.console;
        if (log !== undefined && typeof log.error === 'function') log.error('Uncaught', e);
      }
    });
  }
  globals.queueMicrotask = queueMicrotask;

  // ------------------------------------------------------------------ performance

  // Milliseconds since the context was created (timeOrigin, taken by the loader). The
  // embedding gives JavaScript no monotonic clock, only the wall clock in whole
  // milliseconds: performance.now() is that clock made monotonic (when it steps back,
  // now() carries on from where it was instead), at 1 ms resolution.
  let skew = 0;
  let last = 0;
  function now() {
    let t = dateNow() - timeOrigin + skew;
    if (t < last) {
      skew += last - t;
      t = last;
    }
    last = t;
    return t;
  }
  const performance = {
    now,
    timeOrigin,
    toJSON() { return {timeOrigin}; },
  };
  defineProperty(performance, Symbol.toStringTag, {value: 'Performance', configurable: true});
  globals.performance = performance;

  // ------------------------------------------------------------------ structuredClone

  const ERROR_TYPES = new Map([Error, EvalError, RangeError, ReferenceError, SyntaxError,
                               TypeError, URIError].map((type) => [type.name, type]));
  // Boolean, Number, String and BigInt objects: their type -> its valueOf.
  const PRIMITIVE_WRAPPERS = new Map([Boolean, Number, String, BigInt].map(
    (type) => [type.name, type.prototype.valueOf]));
  const TYPED_ARRAYS = new Map(
    ['Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array', 'Uint16Array', 'Int32Array',
     'Uint32Array', 'Float16Array', 'Float32Array', 'Float64Array', 'BigInt64Array',
     'BigUint64Array'].filter((name) => typeof globalThis[name] === 'function')
                      .map((name) => [name, globalThis[name]]));
  // Objects with internal state that the structured clone algorithm refuses.
  const UNCLONEABLE = new Set(['Promise', 'WeakMap', 'WeakSet', 'WeakRef',
                               'FinalizationRegistry', 'Generator', 'AsyncGenerator',
                               'Symbol', 'Module']);

  function cloneError(what) {
    let text;
    if (typeof what === 'function') text = 'function ' + (what.name || '(anonymous)');
    else if (typeof what === 'symbol') text = what.toString();
    else text = '#<' + what + '>';
    return domError('structuredClone: ' + text + ' could not be cloned.', 'DataCloneError');
  }

  function branded(check, value) {
    try {
      check.call(value);
      return true;
    } catch (_) {
      return false;
    }
  }

  function structuredClone(value, options = undefined) {
    requireArgument(arguments.length, 'structuredClone');
    const list = options == null ? undefined : options.transfer;
    if (list !== undefined && (list === null || typeof list[Symbol.iterator] !== 'function')) {
      throw new TypeError('structuredClone: options.transfer must be an iterable');
    }
    const transfer = list === undefined ? [] : Array.from(list);
    for (let i = 0; i < transfer.length; i++) {
      const buffer = transfer[i];
      if (!branded(bufferByteLength, buffer)) {
        throw domError('structuredClone: value at index ' + i + ' of transfer is not ' +
                       'transferable (only ArrayBuffers are).', 'DataCloneError');
      }
      if (transfer.indexOf(buffer) !== i) {
        throw domError('structuredClone: an ArrayBuffer is listed twice in transfer.',
                       'DataCloneError');
      }
      if (buffer.detached) {
        throw domError('structuredClone: an ArrayBuffer in transfer is detached.',
                       'DataCloneError');
      }
    }
    const copy = clone(value, new Map());
    // The clone has copies of the transferred buffers; the originals are detached only
    // now, so a clone that failed leaves them as they were.
    for (const buffer of transfer) bufferTransfer.call(buffer);
    return copy;
  }
  globals.structuredClone = structuredClone;

  function clone(value, memory) {
    const type = typeof value;
    if (type === 'function' || type === 'symbol') throw cloneError(value);
    if (type !== 'object' || value === null) return value;
    const known = memory.get(value);
    if (known !== undefined) return known;
    if (isArray(value)) {
      const copy = new Array(value.length);
      memory.set(value, copy);
      copyProperties(value, copy, memory);
      return copy;
    }
    if (isView(value)) return cloneView(value, memory);
    const tag = objectToString.call(value).slice(8, -1);
    const special = tag === 'Object' ? undefined : cloneSpecial(tag, value, memory);
    if (special !== undefined) return special;
    const copy = {};
    memory.set(value, copy);
    copyProperties(value, copy, memory);
    return copy;
  }

  // The copy of an object of a built-in type, or undefined for an ordinary object.
  function cloneSpecial(tag, value, memory) {
    let copy;
    if (tag === 'Date' && branded(dateGetTime, value)) {
      copy = new Date(dateGetTime.call(value));
    } else if (tag === 'RegExp' && branded(regexpSource, value)) {
      copy = new RegExp(regexpSource.call(value), regexpFlags.call(value));
    } else if (tag === 'Map' && branded(mapSize, value)) {
      return cloneMap(value, memory);
    } else if (tag === 'Set' && branded(setSize, value)) {
      return cloneSet(value, memory);
    } else if (tag === 'ArrayBuffer' && branded(bufferByteLength, value)) {
      copy = cloneBuffer(value);
    } else if (tag === 'SharedArrayBuffer' && branded(sharedByteLength, value)) {
      copy = value;   // shared memory stays shared (as in Node)
    } else if (tag === 'Error' && isError(value)) {
      return cloneAnError(value, memory);
    } else if (PRIMITIVE_WRAPPERS.has(tag) && branded(PRIMITIVE_WRAPPERS.get(tag), value)) {
      copy = Object(PRIMITIVE_WRAPPERS.get(tag).call(value));
    } else if (UNCLONEABLE.has(tag) || tag.startsWith('Temporal.') || tag.startsWith('Intl.')) {
      throw cloneError(tag);
    } else {
      return undefined;
    }
    memory.set(value, copy);
    return copy;
  }

  function cloneBuffer(buffer) {
    if (buffer.detached) {
      throw domError('structuredClone: an ArrayBuffer is detached and could not be cloned.',
                     'DataCloneError');
    }
    if (!buffer.resizable) return bufferSlice.call(buffer, 0);
    const copy = new ArrayBuffer(buffer.byteLength, {maxByteLength: buffer.maxByteLength});
    new Uint8Array(copy).set(new Uint8Array(buffer));
    return copy;
  }

  function cloneView(view, memory) {
    const buffer = clone(view.buffer, memory);
    const kind = typedArrayTag.call(view);
    const copy = kind === undefined
      ? new DataView(buffer, view.byteOffset, view.byteLength)
      : new (TYPED_ARRAYS.get(kind))(buffer, view.byteOffset, view.length);
    memory.set(view, copy);
    return copy;
  }

  function cloneMap(map, memory) {
    const copy = new Map();
    memory.set(map, copy);
    const entries = [];
    mapForEach.call(map, (v, k) => { entries.push(k, v); });
    for (let i = 0; i < entries.length; i += 2) {
      mapSet.call(copy, clone(entries[i], memory), clone(entries[i + 1], memory));
    }
    return copy;
  }

  function cloneSet(set, memory) {
    const copy = new Set();
    memory.set(set, copy);
    const members = [];
    setForEach.call(set, (v) => { members.push(v); });
    for (const member of members) setAdd.call(copy, clone(member, memory));
    return copy;
  }

  // An error keeps its type (one of the standard ones, else Error), message, stack and
  // cause; a DOMException its name.
  function cloneAnError(error, memory) {
    const message = hasOwn(error, 'message') ? String(error.message) : undefined;
    let copy;
    if (error instanceof DOMError) {
      copy = new DOMError(message, error.name);
    } else {
      const type = ERROR_TYPES.get(String(error.name)) ?? Error;
      copy = message === undefined ? new type() : new type(message);
    }
    memory.set(error, copy);
    const stack = error.stack;
    if (typeof stack === 'string') {
      defineProperty(copy, 'stack', {value: stack, writable: true, configurable: true});
    }
    if (hasOwn(error, 'cause')) {
      defineProperty(copy, 'cause', {value: clone(error.cause, memory), writable: true,
                                     configurable: true});
    }
    return copy;
  }

  // The own enumerable string-keyed properties (array elements included), cloned.
  function copyProperties(value, copy, memory) {
    for (const key of ownKeys(value)) {
      if (!hasOwn(value, key)) continue;   // a getter deleted it meanwhile
      const item = clone(value[key], memory);
      if (key === '__proto__') {
        defineProperty(copy, key, {value: item, writable: true, enumerable: true,
                                   configurable: true});
      } else {
        copy[key] = item;
      }
    }
  }

  // ------------------------------------------------------------------ crypto

  const INTEGER_ARRAYS = new Set(['Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array',
                                  'Uint16Array', 'Int32Array', 'Uint32Array', 'BigInt64Array',
                                  'BigUint64Array']);
  const MAX_RANDOM_BYTES = 65536;
  const POOL_BLOCKS = 4;    // ChaCha20 blocks per refill (256 B, of which 32 B are the next key)
  let key = null;           // Uint32Array(8), from the seed on first use
  let pool = null;          // Uint32Array of POOL_BLOCKS blocks of keystream
  let poolBytes = null;     // the same memory as bytes
  let poolAt = 0;           // the next unused byte of the pool

  // The ChaCha20 block (RFC 8439 2.3) for key (8 words), counter and nonce (3 words),
  // as 16 words into out[offset, offset + 16). Written out on local variables (the
  // quarter rounds of the RFC, columns then diagonals): several times faster than
  // quarter rounds on an array, most of all before V8 has optimised it.
  function chachaBlock(k, counter, nonce, out, offset) {
    let x0 = 0x61707865, x1 = 0x3320646e, x2 = 0x79622d32, x3 = 0x6b206574;
    let x4 = k[0], x5 = k[1], x6 = k[2], x7 = k[3], x8 = k[4], x9 = k[5], x10 = k[6];
    let x11 = k[7], x12 = counter, x13 = nonce[0], x14 = nonce[1], x15 = nonce[2];
    for (let round = 0; round < 10; round++) {   // 10 double rounds: columns, diagonals
      x0 = (x0 + x4) | 0; x12 ^= x0; x12 = (x12 << 16) | (x12 >>> 16);
      x8 = (x8 + x12) | 0; x4 ^= x8; x4 = (x4 << 12) | (x4 >>> 20);
      x0 = (x0 + x4) | 0; x12 ^= x0; x12 = (x12 << 8) | (x12 >>> 24);
      x8 = (x8 + x12) | 0; x4 ^= x8; x4 = (x4 << 7) | (x4 >>> 25);
      x1 = (x1 + x5) | 0; x13 ^= x1; x13 = (x13 << 16) | (x13 >>> 16);
      x9 = (x9 + x13) | 0; x5 ^= x9; x5 = (x5 << 12) | (x5 >>> 20);
      x1 = (x1 + x5) | 0; x13 ^= x1; x13 = (x13 << 8) | (x13 >>> 24);
      x9 = (x9 + x13) | 0; x5 ^= x9; x5 = (x5 << 7) | (x5 >>> 25);
      x2 = (x2 + x6) | 0; x14 ^= x2; x14 = (x14 << 16) | (x14 >>> 16);
      x10 = (x10 + x14) | 0; x6 ^= x10; x6 = (x6 << 12) | (x6 >>> 20);
      x2 = (x2 + x6) | 0; x14 ^= x2; x14 = (x14 << 8) | (x14 >>> 24);
      x10 = (x10 + x14) | 0; x6 ^= x10; x6 = (x6 << 7) | (x6 >>> 25);
      x3 = (x3 + x7) | 0; x15 ^= x3; x15 = (x15 << 16) | (x15 >>> 16);
      x11 = (x11 + x15) | 0; x7 ^= x11; x7 = (x7 << 12) | (x7 >>> 20);
      x3 = (x3 + x7) | 0; x15 ^= x3; x15 = (x15 << 8) | (x15 >>> 24);
      x11 = (x11 + x15) | 0; x7 ^= x11; x7 = (x7 << 7) | (x7 >>> 25);
      x0 = (x0 + x5) | 0; x15 ^= x0; x15 = (x15 << 16) | (x15 >>> 16);
      x10 = (x10 + x15) | 0; x5 ^= x10; x5 = (x5 << 12) | (x5 >>> 20);
      x0 = (x0 + x5) | 0; x15 ^= x0; x15 = (x15 << 8) | (x15 >>> 24);
      x10 = (x10 + x15) | 0; x5 ^= x10; x5 = (x5 << 7) | (x5 >>> 25);
      x1 = (x1 + x6) | 0; x12 ^= x1; x12 = (x12 << 16) | (x12 >>> 16);
      x11 = (x11 + x12) | 0; x6 ^= x11; x6 = (x6 << 12) | (x6 >>> 20);
      x1 = (x1 + x6) | 0; x12 ^= x1; x12 = (x12 << 8) | (x12 >>> 24);
      x11 = (x11 + x12) | 0; x6 ^= x11; x6 = (x6 << 7) | (x6 >>> 25);
      x2 = (x2 + x7) | 0; x13 ^= x2; x13 = (x13 << 16) | (x13 >>> 16);
      x8 = (x8 + x13) | 0; x7 ^= x8; x7 = (x7 << 12) | (x7 >>> 20);
      x2 = (x2 + x7) | 0; x13 ^= x2; x13 = (x13 << 8) | (x13 >>> 24);
      x8 = (x8 + x13) | 0; x7 ^= x8; x7 = (x7 << 7) | (x7 >>> 25);
      x3 = (x3 + x4) | 0; x14 ^= x3; x14 = (x14 << 16) | (x14 >>> 16);
      x9 = (x9 + x14) | 0; x4 ^= x9; x4 = (x4 << 12) | (x4 >>> 20);
      x3 = (x3 + x4) | 0; x14 ^= x3; x14 = (x14 << 8) | (x14 >>> 24);
      x9 = (x9 + x14) | 0; x4 ^= x9; x4 = (x4 << 7) | (x4 >>> 25);
    }
    out[offset] = x0 + 0x61707865; out[offset + 1] = x1 + 0x3320646e;
    out[offset + 2] = x2 + 0x79622d32; out[offset + 3] = x3 + 0x6b206574;
    out[offset + 4] = x4 + k[0]; out[offset + 5] = x5 + k[1];
    out[offset + 6] = x6 + k[2]; out[offset + 7] = x7 + k[3];
    out[offset + 8] = x8 + k[4]; out[offset + 9] = x9 + k[5];
    out[offset + 10] = x10 + k[6]; out[offset + 11] = x11 + k[7];
    out[offset + 12] = x12 + counter; out[offset + 13] = x13 + nonce[0];
    out[offset + 14] = x14 + nonce[1]; out[offset + 15] = x15 + nonce[2];
  }

  const ZERO_NONCE = new Uint32Array(3);

  function littleEndianWords(bytes) {
    const words = new Uint32Array(bytes.length >> 2);
    for (let i = 0; i < words.length; i++) {
      words[i] = bytes[4 * i] | (bytes[4 * i + 1] << 8) | (bytes[4 * i + 2] << 16) |
                 (bytes[4 * i + 3] << 24);
    }
    return words;
  }

  // A new pool of keystream; its first 32 bytes replace the key and are wiped.
  function refill() {
    if (key === null) {
      const seed = new Uint8Array(32);
      for (let i = 0; i < 32; i++) seed[i] = parseInt(seedHex.slice(2 * i, 2 * i + 2), 16);
      key = littleEndianWords(seed);
      seed.fill(0);
      pool = new Uint32Array(16 * POOL_BLOCKS);
      poolBytes = new Uint8Array(pool.buffer);
    }
    for (let block = 0; block < POOL_BLOCKS; block++) {
      chachaBlock(key, block, ZERO_NONCE, pool, 16 * block);
    }
    key.set(pool.subarray(0, 8));
    pool.fill(0, 0, 8);
    poolAt = 32;
  }

  // Fills bytes with keystream; what was handed out is wiped from the pool.
  function randomFill(bytes) {
    const length = bytes.length;
    let at = 0;
    while (at < length) {
      if (pool === null || poolAt === poolBytes.length) refill();
      const n = Math.min(poolBytes.length - poolAt, length - at);
      bytes.set(poolBytes.subarray(poolAt, poolAt + n), at);
      poolBytes.fill(0, poolAt, poolAt + n);
      poolAt += n;
      at += n;
    }
  }

  function getRandomValues(array) {
    requireArgument(arguments.length, 'crypto.getRandomValues');
    if (!isView(array)) {
      throw new TypeError("crypto.getRandomValues: parameter 1 is not of type 'ArrayBufferView'");
    }
    if (!INTEGER_ARRAYS.has(typedArrayTag.call(array))) {
      throw domError('crypto.getRandomValues: the array must be an integer-type TypedArray ' +
                     '(not a Float16/32/64Array or a DataView).', 'TypeMismatchError');
    }
    const length = array.byteLength;
    if (length > MAX_RANDOM_BYTES) {
      throw domError('crypto.getRandomValues: the array has ' + length + ' bytes, more than ' +
                     'the ' + MAX_RANDOM_BYTES + ' one call may ask for.', 'QuotaExceededError');
    }
    if (length > 0) randomFill(new Uint8Array(array.buffer, array.byteOffset, length));
    return array;
  }

  let hexBytes = null;   // byte -> two hex digits (built on first use)

  function randomUUID() {
    if (hexBytes === null) {
      hexBytes = Array.from({length: 256}, (_, i) => (i + 0x100).toString(16).slice(1));
    }
    const b = new Uint8Array(16);
    randomFill(b);
    b[6] = (b[6] & 0x0F) | 0x40;   // version 4
    b[8] = (b[8] & 0x3F) | 0x80;   // variant 10 (RFC 4122)
    const h = hexBytes;
    return h[b[0]] + h[b[1]] + h[b[2]] + h[b[3]] + '-' + h[b[4]] + h[b[5]] + '-' +
           h[b[6]] + h[b[7]] + '-' + h[b[8]] + h[b[9]] + '-' + h[b[10]] + h[b[11]] +
           h[b[12]] + h[b[13]] + h[b[14]] + h[b[15]];
  }

  const crypto = {getRandomValues, randomUUID};
  defineProperty(crypto, Symbol.toStringTag, {value: 'Crypto', configurable: true});
  globals.crypto = crypto;

  const internals = {
    // The next n bytes of this context's generator.
    randomBytes(n) {
      const bytes = new Uint8Array(n);
      randomFill(bytes);
      return bytes;
    },
    // ChaCha20 block of a 32-byte key, a counter and a 12-byte nonce, as 64 bytes.
    chacha20Block(keyBytes, counter, nonceBytes) {
      const out = new Uint32Array(16);
      chachaBlock(littleEndianWords(keyBytes), counter, littleEndianWords(nonceBytes), out, 0);
      const bytes = new Uint8Array(64);
      for (let i = 0; i < 64; i++) bytes[i] = (out[i >> 2] >>> (8 * (i & 3))) & 0xFF;
      return bytes;
    },
  };
  return {globals, internals};
})
