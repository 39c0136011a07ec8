#!/usr/bin/env node
// Example Node client of trams.v1.TramsService: @grpc/grpc-js with proto/trams/v1/trams.proto
// loaded at run time by @grpc/proto-loader (field names as in the proto, int64 as Number, enums as
// their names, bytes as Buffer). Every call that names a session also sends it as x-session-id.
//
//   cd client/node && npm ci && node client.js --server 127.0.0.1:50051
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const SESSION_METADATA = 'x-session-id';

// int64 positions and counts fit a double exactly below 2^53; send a seed above that as a string.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

function loadTramsService(options = LOADER_OPTIONS) {
  const definition = protoLoader.loadSync('trams/v1/trams.proto', options);
  return grpc.loadPackageDefinition(definition).trams.v1;
}

function sessionMetadata(sessionId) {
  const md = new grpc.Metadata();
  if (sessionId) md.set(SESSION_METADATA, sessionId);
  return md;
}

const toBuffer = (x) => (Buffer.isBuffer(x) ? x : Buffer.from(String(x), 'utf8'));

class TramsClient {
  // target: "host:port"; timeoutMs: per-call deadline (undefined = none).
  constructor(target, { timeoutMs } = {}) {
    const v1 = loadTramsService();
    this.stub = new v1.TramsService(target, grpc.credentials.createInsecure());
    this.timeoutMs = timeoutMs;
  }

  close() {
    this.stub.close();
  }

  _options() {
    return this.timeoutMs === undefined ? {} : { deadline: Date.now() + this.timeoutMs };
  }

  _unary(method, request, sessionId) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, sessionMetadata(sessionId), this._options(), (err, response) =>
        err ? reject(err) : resolve(response));
    });
  }

  modelInfo() {
    return this._unary('GetModelInfo', {});
  }

  // memory: {mode: 'MEMORY_MODE_TRAMS', mem_len, topk, remain, layers, metric}; unset = defaults.
  createSession({ sessionId = '', memory = {}, segmentLen } = {}) {
    const request = { session_id: sessionId, memory };
    if (segmentLen !== undefined) request.segment_len = segmentLen;
    return this._unary('CreateSession', request, sessionId);
  }

  getSession(sessionId) {
    return this._unary('GetSession', { session_id: sessionId }, sessionId);
  }

  async listSessions() {
    return (await this._unary('ListSessions', {})).sessions;
  }

  deleteSession(sessionId) {
    return this._unary('DeleteSession', { session_id: sessionId }, sessionId);
  }

  explainSelection(sessionId) {
    return this._unary('ExplainSelection', { session_id: sessionId }, sessionId);
  }

  // Streams `text` in chunks of chunkBytes over the bidi Score call. onResponse (optional) sees
  // each ScoreResponse as it arrives. Resolves to {tokens, last}: every TokenScore and the last
  // response's running totals.
  score(sessionId, text, { chunkBytes = 4096, alternatives = 0, entropy = false,
    expectedPosition, onResponse } = {}) {
    const data = toBuffer(text);
    return new Promise((resolve, reject) => {
      const call = this.stub.Score(sessionMetadata(sessionId), this._options());
      const tokens = [];
      let last = null;
      call.on('data', (response) => {
        tokens.push(...response.tokens);
        last = response;
        if (onResponse) onResponse(response);
      });
      call.on('error', reject);
      // tokens before last.first_position answer an earlier call's provisional tail again, and tokens
      // marked provisional are answered again by the next call: keep the latest per position.
      call.on('end', () => resolve({ tokens, last }));

      const first = { session_id: sessionId, options: { alternatives, entropy } };
      if (expectedPosition !== undefined) first.expected_position = expectedPosition;
      if (data.length === 0) call.write(first);
      for (let offset = 0; offset < data.length; offset += chunkBytes) {
        const request = offset === 0 ? first : {};
        request.text = data.subarray(offset, offset + chunkBytes);
        call.write(request);  // grpc-js buffers; backpressure is irrelevant at example sizes
      }
      call.end();
    });
  }

  // Server-streaming Generate. onToken (optional) sees each TokenScore as it arrives. Resolves
  // to {tokens, finishReason, position}.
  generate(sessionId, { prompt, maxTokens = 64, temperature = 1.0, topK = 0, topP = 0, seed,
    stop = [], expectedPosition, onToken } = {}) {
    const request = {
      session_id: sessionId, max_tokens: maxTokens, temperature, top_k: topK, top_p: topP,
      stop: stop.map(toBuffer),
    };
    if (prompt !== undefined && prompt !== '') request.prompt_text = toBuffer(prompt);
    if (seed !== undefined) request.seed = seed;
    if (expectedPosition !== undefined) request.expected_position = expectedPosition;
    return new Promise((resolve, reject) => {
      const call = this.stub.Generate(request, sessionMetadata(sessionId), this._options());
      const tokens = [];
      let finishReason = 'FINISH_REASON_UNSPECIFIED';
      let position = 0;
      call.on('data', (response) => {
        for (const token of response.tokens) {
          tokens.push(token);
          if (onToken) onToken(token);
        }
        position = response.position;
        if (response.finish_reason !== 'FINISH_REASON_UNSPECIFIED') {
          finishReason = response.finish_reason;
        }
      });
      call.on('error', reject);
      call.on('end', () => resolve({ tokens, finishReason, position }));
    });
  }
}

const DEMO_TEXT = 'It is a truth universally acknowledged, that a single man in possession\n' +
  'of a good fortune, must be in want of a wife.\n';

async function demo(argv) {
  const arg = (name, fallback) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
  };
  const client = new TramsClient(arg('server', '127.0.0.1:50051'), { timeoutMs: 60000 });
  try {
    const info = await client.modelInfo();
    console.log(`model ${info.model_dir}: ${info.n_layer} layers, vocab ${info.vocab_size}, ` +
      `tokenizer ${info.tokenizer}, device ${info.device}`);
    const session = await client.createSession();
    const sid = session.session_id;
    console.log(`session ${sid}: ${session.memory.mode} mem_len ${session.memory.mem_len} ` +
      `segment_len ${session.segment_len}`);
    const { last } = await client.score(sid, DEMO_TEXT, { chunkBytes: 64 });
    console.log(`scored ${last.tokens_scored} tokens: ppl ${last.ppl.toFixed(3)}, ` +
      `bits/token ${last.bits_per_token.toFixed(3)}`);
    process.stdout.write('generated: ');
    const gen = await client.generate(sid, {
      prompt: arg('prompt', 'The '), maxTokens: Number(arg('max_tokens', 32)), temperature: 0.8,
      topK: 40, seed: Number(arg('seed', 1)),
      onToken: (t) => process.stdout.write(t.text.toString('utf8')),
    });
    process.stdout.write(`\n[${gen.tokens.length} tokens, ${gen.finishReason}, ` +
      `position ${gen.position}]\n`);
    await client.deleteSession(sid);
  } finally {
    client.close();
  }
}

module.exports = { TramsClient, loadTramsService, sessionMetadata, LOADER_OPTIONS, PROTO_ROOT };

if (require.main === module) {
  demo(process.argv.slice(2)).catch((err) => {
    const code = err.code !== undefined ? grpc.status[err.code] : 'ERROR';
    console.error(`client.js: ${code}: ${err.details || err.message}`);
    process.exit(1);
  });
}
