#!/usr/bin/env node
// Interop test: the real trams-server binary on loopback, driven by Node's @grpc/grpc-js with
// protos loaded at run time by @grpc/proto-loader (trams from proto/, health from grpc-proto).
// Needs client/node/node_modules: runs `npm ci` there when it is missing and npm is on PATH.
// Exits 77 (ctest SKIP_RETURN_CODE) when node:test, the modules, grpc-proto or the server are
// missing. Environment: TRAMS_SERVER, TRAMS_MODEL, TRAMS_SERVER_FLAGS (as in python_interop_test.py).
'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const { createRequire } = require('node:module');

const SKIP = 77;
const REPO = path.resolve(__dirname, '..', '..');
const NODE_DIR = path.join(REPO, 'client', 'node');
const HEALTH_PROTO = '/usr/share/grpc-proto/grpc/health/v1/health.proto';
const SERVER = process.env.TRAMS_SERVER || path.join(REPO, 'build', 'server', 'trams-server');
const MODEL = process.env.TRAMS_MODEL ||
  path.join(REPO, 'tests', 'golden', 'models', 'adaptive_samelen');
const SAMPLE = path.join(REPO, 'tests', 'data', 'sample_excerpt.txt');
const SEGMENT_LEN = 8;
const EXTRA_FLAGS = (process.env.TRAMS_SERVER_FLAGS || '').split(/\s+/).filter(Boolean);

function skip(message) {
  console.error(`SKIP: ${message}`);
  process.exit(SKIP);
}

function ensureModules() {
  const have = () => fs.existsSync(path.join(NODE_DIR, 'node_modules', '@grpc', 'grpc-js')) &&
    fs.existsSync(path.join(NODE_DIR, 'node_modules', '@grpc', 'proto-loader'));
  if (have()) return;
  const npm = spawnSync('npm', ['--version'], { encoding: 'utf8' });
  if (npm.status !== 0) skip(`${NODE_DIR}/node_modules missing and no npm to install it`);
  console.error(`# npm ci in ${NODE_DIR}`);
  const ci = spawnSync('npm', ['ci', '--no-audit', '--no-fund'],
    { cwd: NODE_DIR, encoding: 'utf8', timeout: 240000 });
  if (ci.status !== 0 || !have()) {
    skip(`npm ci in ${NODE_DIR} failed (no registry access?):\n${ci.stderr || ci.error}`);
  }
}

let test;
try {
  ({ test } = require('node:test'));
} catch (e) {
  skip(`node:test unavailable in node ${process.version} (needs >= 18)`);
}
if (!fs.existsSync(HEALTH_PROTO)) skip(`${HEALTH_PROTO} missing (apt-get install grpc-proto)`);
try {
  fs.accessSync(SERVER, fs.constants.X_OK);
} catch (e) {
  skip(`server binary ${SERVER} not built (set TRAMS_SERVER)`);
}
ensureModules();

const assert = require('node:assert/strict');
const nodeRequire = createRequire(path.join(NODE_DIR, 'package.json'));
const grpc = nodeRequire('@grpc/grpc-js');
const protoLoader = nodeRequire('@grpc/proto-loader');

const LOADER = { keepCase: true, longs: Number, enums: String, bytes: Buffer, defaults: true,
  oneofs: true };
const v1 = grpc.loadPackageDefinition(protoLoader.loadSync('trams/v1/trams.proto',
  { ...LOADER, includeDirs: [path.join(REPO, 'proto')] })).trams.v1;
const healthV1 = grpc.loadPackageDefinition(protoLoader.loadSync('grpc/health/v1/health.proto',
  { ...LOADER, includeDirs: ['/usr/share/grpc-proto'] })).grpc.health.v1;

function startServer(workdir, extra = []) {
  const portFile = path.join(workdir, 'ports');
  const logPath = path.join(workdir, 'server.log');
  const log = fs.openSync(logPath, 'w');
  const proc = spawn(SERVER, ['--model', MODEL, '--listen', '127.0.0.1:0', '--metrics_listen',
    '127.0.0.1:0', '--port_file', portFile, '--mode', 'trams', '--mem_len', '24', '--topk', '4',
    '--remain', '8', '--segment_len', `${SEGMENT_LEN}`, ...EXTRA_FLAGS, ...extra],
  { stdio: ['ignore', log, log] });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const logTail = () => fs.readFileSync(logPath, 'utf8').slice(-4000);
  const ready = (async () => {
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) throw new Error(`server exited ${proc.exitCode}:\n${logTail()}`);
      if (fs.existsSync(portFile)) {
        const fields = fs.readFileSync(portFile, 'utf8').trim().split(/\s+/);
        if (fields.length === 2 && fields.every((f) => /^\d+$/.test(f))) return Number(fields[0]);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    proc.kill('SIGKILL');
    throw new Error(`no port file after 60 s:\n${logTail()}`);
  })();
  return { proc, ready, exited, logTail };
}

const md = (sid) => {
  const m = new grpc.Metadata();
  if (sid) m.set('x-session-id', sid);
  return m;
};
const deadline = () => ({ deadline: Date.now() + 60000 });
const unary = (client, method, request, sid) => new Promise((resolve, reject) =>
  client[method](request, md(sid), deadline(), (err, res) => (err ? reject(err) : resolve(res))));

function score(client, sid, data, chunk) {
  return new Promise((resolve, reject) => {
    const call = client.Score(md(sid), deadline());
    const responses = [];
    call.on('data', (r) => responses.push(r));
    call.on('error', reject);
    call.on('end', () => resolve(responses));
    for (let off = 0; off < data.length; off += chunk) {
      const request = off === 0 ? { session_id: sid } : {};
      request.text = data.subarray(off, off + chunk);
      call.write(request);
    }
    call.end();
  });
}

function generate(client, request, sid) {
  return new Promise((resolve, reject) => {
    const call = client.Generate(request, md(sid), deadline());
    const responses = [];
    call.on('data', (r) => responses.push(r));
    call.on('error', reject);
    call.on('end', () => resolve(responses));
  });
}

const f32 = (x) => Math.fround(x);

test('trams-server interop (node @grpc/grpc-js)', async (t) => {
  const workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'trams-interop-node-'));
  const server = startServer(workdir);
  const port = await server.ready;
  const target = `127.0.0.1:${port}`;
  const client = new v1.TramsService(target, grpc.credentials.createInsecure());
  const health = new healthV1.Health(target, grpc.credentials.createInsecure());
  const sid = `node-${process.pid}`;

  try {
    await t.test('health SERVING', async () => {
      for (const service of ['', 'trams.v1.TramsService']) {
        const r = await new Promise((resolve, reject) => health.Check({ service }, deadline(),
          (err, res) => (err ? reject(err) : resolve(res))));
        assert.equal(r.status, 'SERVING', `service '${service}'`);
      }
    });

    await t.test('model info', async () => {
      const info = await unary(client, 'GetModelInfo', {});
      assert.equal(info.vocab_size, 260);
      assert.equal(info.tokenizer, 'byte');
      assert.equal(info.default_segment_len, SEGMENT_LEN);
      assert.equal(info.default_memory.mode, 'MEMORY_MODE_TRAMS');
    });

    await t.test('create', async () => {
      const s = await unary(client, 'CreateSession', { session_id: sid }, sid);
      assert.equal(s.session_id, sid);
      assert.equal(s.memory.mode, 'MEMORY_MODE_TRAMS');
      assert.equal(s.memory.mem_len, 24);
      assert.equal(s.segment_len, SEGMENT_LEN);
      assert.equal(s.position, 0);
    });

    const data = fs.readFileSync(SAMPLE).subarray(0, 2000);
    await t.test('score: per-segment responses, same log-probs for 3- and 600-byte chunks',
      async () => {
        const results = [];
        for (const [id, chunk] of [[sid, 3], [`${sid}-b`, 600]]) {
          if (id !== sid) await unary(client, 'CreateSession', { session_id: id }, id);
          const responses = await score(client, id, data, chunk);
          for (const r of responses.slice(0, -1)) assert.equal(r.tokens.length, SEGMENT_LEN);
          const tokens = responses.flatMap((r) => r.tokens);
          assert.equal(tokens.length, data.length);
          assert.deepEqual(Buffer.concat(tokens.map((x) => x.text)), data);
          assert.equal(tokens[0].logprob, undefined, 'first token of a session has no logprob');
          assert.ok(tokens.slice(1).every((x) => typeof x.logprob === 'number' && x.logprob <= 0));
          const last = responses[responses.length - 1];
          assert.equal(last.position, data.length);
          assert.equal(last.tokens_scored, data.length - 1);
          const nll = -tokens.slice(1).reduce((a, x) => a + x.logprob, 0);
          assert.ok(Math.abs(last.nll_sum - nll) < 1e-6 * data.length, `${last.nll_sum} vs ${nll}`);
          results.push(tokens.map((x) => [x.position, x.id, x.logprob === undefined ? null : f32(x.logprob)]));
        }
        assert.deepEqual(results[0], results[1]);
        await unary(client, 'DeleteSession', { session_id: `${sid}-b` }, `${sid}-b`);
      });

    await t.test('generate: seeded, streamed, continues the session', async () => {
      const runs = [];
      for (const id of [`${sid}-g1`, `${sid}-g2`]) {
        await unary(client, 'CreateSession', { session_id: id }, id);
        const responses = await generate(client, { session_id: id, prompt_text: Buffer.from('The '),
          max_tokens: 16, temperature: 0.9, top_k: 40, seed: 99 }, id);
        const tokens = responses.flatMap((r) => r.tokens);
        assert.equal(tokens.length, 16);
        assert.equal(responses[responses.length - 1].finish_reason, 'FINISH_REASON_LENGTH');
        assert.equal(responses[responses.length - 1].position, 4 + 16);
        runs.push(tokens.map((x) => x.id));
        await unary(client, 'DeleteSession', { session_id: id }, id);
      }
      assert.deepEqual(runs[0], runs[1]);
      // On the scored session: generation continues after the scored text.
      const responses = await generate(client, { max_tokens: 4, temperature: 0 }, sid);
      const tokens = responses.flatMap((r) => r.tokens);
      assert.deepEqual(tokens.map((x) => x.position), [0, 1, 2, 3].map((i) => data.length + i));
    });

    await t.test('list and get', async () => {
      const { sessions } = await unary(client, 'ListSessions', {});
      const mine = sessions.find((s) => s.session_id === sid);
      assert.ok(mine, 'created session listed');
      assert.equal(mine.position, data.length + 4);
      const s = await unary(client, 'GetSession', {}, sid);  // id from metadata only
      assert.equal(s.session_id, sid);
      assert.equal(s.tokens_scored, data.length - 1 + 4);
    });

    await t.test('delete, then NOT_FOUND with a message', async () => {
      await unary(client, 'DeleteSession', { session_id: sid }, sid);
      await assert.rejects(unary(client, 'GetSession', { session_id: sid }, sid), (err) => {
        assert.equal(err.code, grpc.status.NOT_FOUND);
        assert.ok(err.details.length > 0);
        return true;
      });
      await assert.rejects(unary(client, 'CreateSession', { session_id: 'bad id!' }),
        (err) => err.code === grpc.status.INVALID_ARGUMENT);
    });

    await t.test('example client.js demo', async () => {
      const r = spawnSync(process.execPath, [path.join(NODE_DIR, 'client.js'), '--server', target,
        '--max_tokens', '8'], { encoding: 'utf8', timeout: 120000 });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /scored \d+ tokens/);
      assert.match(r.stdout, /FINISH_REASON_LENGTH/);
    });
  } finally {
    client.close();
    health.close();
    server.proc.kill('SIGTERM');
    const { code, signal } = await server.exited;
    assert.equal(code, 0, `server exit after SIGTERM: code ${code} signal ${signal}\n${server.logTail()}`);
    fs.rmSync(workdir, { recursive: true, force: true });
  }
});

// TLS and mutual TLS (--tls_cert, --tls_key, --tls_client_ca) with a CA and certificates openssl makes here.
test('TLS and mutual TLS (node @grpc/grpc-js)', async (t) => {
  if (spawnSync('openssl', ['version']).status !== 0) {
    t.skip('openssl not installed (apt-get install openssl)');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trams-tls-node-'));
  const ssl = (...args) => assert.equal(spawnSync('openssl', args, { stdio: 'ignore' }).status, 0, args.join(' '));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  for (const ca of ['ca', 'clients', 'other']) {
    ssl('req', '-x509', ...ec, '-days', '2', '-subj', `/CN=${ca}`, '-keyout', `${dir}/${ca}.key`, '-out', `${dir}/${ca}.pem`);
  }
  fs.writeFileSync(`${dir}/san.ext`, 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  for (const [name, ca] of [['server', 'ca'], ['alice', 'clients']]) {
    ssl('req', ...ec, '-subj', `/CN=${name}`, '-keyout', `${dir}/${name}.key`, '-out', `${dir}/${name}.csr`);
    ssl('x509', '-req', '-days', '2', '-in', `${dir}/${name}.csr`, '-CA', `${dir}/${ca}.pem`, '-CAkey',
      `${dir}/${ca}.key`, '-CAcreateserial', '-extfile', `${dir}/san.ext`, '-out', `${dir}/${name}.pem`);
  }
  const read = (f) => fs.readFileSync(`${dir}/${f}`);
  const tlsFlags = ['--tls_cert', `${dir}/server.pem`, '--tls_key', `${dir}/server.key`];
  const tls = startServer(fs.mkdtempSync(path.join(dir, 'tls-')), tlsFlags);
  const mtls = startServer(fs.mkdtempSync(path.join(dir, 'mtls-')), [...tlsFlags, '--tls_client_ca', `${dir}/clients.pem`]);
  const clients = [];
  const info = (port, creds) => {
    const c = new v1.TramsService(`127.0.0.1:${port}`, creds);
    clients.push(c);
    return new Promise((resolve, reject) => c.GetModelInfo({}, new grpc.Metadata(), { deadline: Date.now() + 5000 },
      (err, res) => (err ? reject(err) : resolve(res))));
  };
  const refused = (err) => err.code === grpc.status.UNAVAILABLE;
  try {
    const [tlsPort, mtlsPort] = [await tls.ready, await mtls.ready];
    await t.test('TLS: served when trusting the CA; plaintext and another CA refused', async () => {
      assert.equal((await info(tlsPort, grpc.credentials.createSsl(read('ca.pem')))).tokenizer, 'byte');
      await assert.rejects(info(tlsPort, grpc.credentials.createInsecure()), refused);
      await assert.rejects(info(tlsPort, grpc.credentials.createSsl(read('other.pem'))), refused);
    });
    await t.test('mTLS: served with a client certificate from the client CA, refused without', async () => {
      const alice = grpc.credentials.createSsl(read('ca.pem'), read('alice.key'), read('alice.pem'));
      assert.equal((await info(mtlsPort, alice)).tokenizer, 'byte');
      await assert.rejects(info(mtlsPort, grpc.credentials.createSsl(read('ca.pem'))), refused);
    });
  } finally {
    for (const c of clients) c.close();
    for (const s of [tls, mtls]) {
      s.proc.kill('SIGTERM');
      const { code } = await s.exited;
      assert.equal(code, 0, s.logTail());
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// API keys and tenants (--auth_keys): keys in 'authorization: Bearer' metadata, sessions per tenant, a quota.
test('API keys, tenants and quotas (node @grpc/grpc-js)', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trams-keys-node-'));
  const sha = (key) => require('node:crypto').createHash('sha256').update(key).digest('hex');
  fs.writeFileSync(`${dir}/keys`, `alice sha256:${sha('alice-key')}\nbob sha256:${sha('bob-key')} max_sessions=1\n`);
  const server = startServer(fs.mkdtempSync(path.join(dir, 'srv-')), ['--auth_keys', `${dir}/keys`, '--evict', 'refuse']);
  const port = await server.ready;
  const client = new v1.TramsService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const as = (key) => {
    const m = new grpc.Metadata();
    if (key) m.set('authorization', `Bearer ${key}`);
    return m;
  };
  const call = (method, request, key) => new Promise((resolve, reject) =>
    client[method](request, as(key), deadline(), (err, res) => (err ? reject(err) : resolve(res))));
  const code = (c) => (err) => err.code === c;
  try {
    await t.test('without a key every call is UNAUTHENTICATED', async () => {
      await assert.rejects(call('GetModelInfo', {}, ''), code(grpc.status.UNAUTHENTICATED));
      await assert.rejects(call('ListSessions', {}, 'wrong-key'), code(grpc.status.UNAUTHENTICATED));
    });
    await t.test("another tenant's session is NOT_FOUND; one id in two tenants; bob's quota", async () => {
      await call('CreateSession', { session_id: 'doc' }, 'alice-key');
      await assert.rejects(call('GetSession', { session_id: 'doc' }, 'bob-key'),
        (err) => err.code === grpc.status.NOT_FOUND && /^session 'doc' does not exist \[request [0-9a-f]{16}\]$/.test(err.details));
      assert.deepEqual((await call('ListSessions', {}, 'bob-key')).sessions, []);
      assert.equal((await call('CreateSession', { session_id: 'doc' }, 'bob-key')).session_id, 'doc');
      await assert.rejects(call('CreateSession', { session_id: 'two' }, 'bob-key'),
        (err) => err.code === grpc.status.RESOURCE_EXHAUSTED && err.details.includes('max_sessions=1'));
      const mine = (await call('ListSessions', {}, 'alice-key')).sessions.map((s) => s.session_id);
      assert.deepEqual(mine, ['doc']);
    });
  } finally {
    client.close();
    server.proc.kill('SIGTERM');
    const { code: exit } = await server.exited;
    assert.equal(exit, 0, server.logTail());
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
