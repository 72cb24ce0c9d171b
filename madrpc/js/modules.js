// MaDRPC module loader: CommonJS `require` over the files of a script bundle.
//
// It evaluates to the loader interface {define, start}. The engine compiles every
// JavaScript file of the bundle as a function (exports, require, module, __filename,
// __dirname), one eval each so that errors name the file, and hands it to define(path,
// fn); a JSON file is handed over as its text. Then start(config) runs the entry file,
// where config is the JSON text {"entry": path, "links": {file: {spec: path}}}: the
// resolution of every literal require, done once by the engine (madrpc/bundle.py) the
// way Node.js resolves. Modules are cached before they run, so a cycle gets the
// unfinished exports of the module that is still loading, as in Node.js; a module that
// throws is forgotten. start() answers JSON: {"ok": true}, or what the entry threw with
// the first place in the bundle's files the stack names.
(function () {
  'use strict';
  const factories = new Map();
  const cache = new Map();
  let links = {};
  const BUILTINS = new Set([
    'assert', 'buffer', 'child_process', 'cluster', 'crypto', 'dgram', 'dns', 'events', 'fs',
    'http', 'http2', 'https', 'module', 'net', 'os', 'path', 'process', 'querystring',
    'readline', 'stream', 'string_decoder', 'timers', 'tls', 'url', 'util', 'v8', 'vm',
    'worker_threads', 'zlib',
  ]);
  const has = (object, key) => Object.prototype.hasOwnProperty.call(object, key);

  function dirname(path) {
    const slash = path.lastIndexOf('/');
    return slash < 0 ? '' : path.slice(0, slash);
  }

  function normalize(path) {
    const out = [];
    for (const part of path.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') {
        if (!out.length) return null;
        out.pop();
      } else {
        out.push(part);
      }
    }
    return out.join('/');
  }

  // A relative require whose name is computed at run time (not in the links).
  function resolveLate(spec, from) {
    if (!(spec.startsWith('./') || spec.startsWith('../'))) return undefined;
    const base = normalize((dirname(from) ? dirname(from) + '/' : '') + spec);
    if (base === null) return undefined;
    for (const suffix of ['', '.js', '.json', '.cjs', '/index.js', '/index.json']) {
      if (factories.has(base + suffix)) return base + suffix;
    }
    return undefined;
  }

  function notFound(spec, from) {
    let message = `Cannot find module '${spec}' required from ${from}`;
    const name = spec.replace(/^node:/, '').split('/')[0];
    if (spec.startsWith('node:') || BUILTINS.has(name)) {
      message += ': scripts have no Node.js built-in modules (no file system or network, '
        + 'on purpose)';
    } else if (!spec.startsWith('.') && !spec.startsWith('/')) {
      message += ' (looked in the node_modules folders beside the script)';
    }
    const error = new Error(message);
    error.code = 'MODULE_NOT_FOUND';
    return error;
  }

  function load(path, parent) {
    const cached = cache.get(path);
    if (cached !== undefined) return cached.exports;
    const module = {
      id: path, filename: path, path: dirname(path), exports: {}, loaded: false, parent,
      children: [],
    };
    if (parent) parent.children.push(module);
    cache.set(path, module);
    const factory = factories.get(path);
    try {
      if (typeof factory === 'string') {
        try {
          module.exports = JSON.parse(factory);
        } catch (error) {
          throw new SyntaxError(`${path}: ${error.message}`);
        }
      } else {
        module.require = requireFrom(path, module);
        factory.call(module.exports, module.exports, module.require, module, path,
                     dirname(path));
      }
    } catch (error) {
      cache.delete(path);
      throw error;
    }
    module.loaded = true;
    return module.exports;
  }

  function requireFrom(from, module) {
    const table = has(links, from) ? links[from] : {};
    const find = (spec) => {
      if (typeof spec !== 'string') {
        throw new TypeError('require() takes the name of a module (a string)');
      }
      const target = has(table, spec) ? table[spec] : resolveLate(spec, from);
      if (target === undefined) throw notFound(spec, from);
      return target;
    };
    const require = (spec) => load(find(spec), module);
    require.resolve = find;
    return require;
  }

  function where(error) {
    const stack = error !== null && typeof error === 'object' ? String(error.stack || '') : '';
    for (const line of stack.split('\n')) {
      const match = /\(([^()]+):(\d+):(\d+)\)\s*$/.exec(line)
        || /^\s*at ([^()]+):(\d+):(\d+)\s*$/.exec(line);
      if (match && factories.has(match[1])) {
        return {file: match[1], line: Number(match[2]), column: Number(match[3])};
      }
    }
    return {};
  }

  function describe(error) {
    if (error !== null && typeof error === 'object' && 'message' in error) {
      return `${error.name || 'Error'}: ${error.message}`;
    }
    return `Uncaught ${String(error)}`;
  }

  return {
    define(path, factory) { factories.set(path, factory); },
    start() {
      const config = JSON.parse(this);
      links = config.links;
      try {
        load(config.entry, null);
        return JSON.stringify({ok: true});
      } catch (error) {
        let stack = '';
        try { stack = String(error.stack || ''); } catch (ignored) { /* a hostile getter */ }
        return JSON.stringify({error: describe(error), stack, ...where(error)});
      }
    },
  };
})()
