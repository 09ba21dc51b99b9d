#!/usr/bin/env node
// The benchmark's load generator: stock Yjs clients (yjs, y-protocols, ws) driving any
// y-websocket server, independent of the servers under test. Prints one JSON report.
//
//   node loadgen.mjs fanout --url ws://127.0.0.1:8080/ws --rooms 50 --clients 5 --rate 10
//   node loadgen.mjs ramp | presence | idle | join | seed-docs | open-docs  [options]
//
// With --server-pid the report includes the server's CPU (and memory for `idle`), read from
// /proc, over exactly the measured window. Run it pinned to a core of its own (taskset).
// Several servers: --url and --server-pid take comma-separated lists (the CPU is their sum);
// each room goes to one of them (--spread rooms), or each room's clients are dealt over all
// of them (--spread clients).
import { parseArgs } from 'node:util'
import * as scenarios from './lib/scenarios.mjs'

const SCENARIOS = {
  fanout: scenarios.fanout,
  ramp: scenarios.ramp,
  presence: scenarios.presence,
  idle: scenarios.idle,
  join: scenarios.join,
  'seed-docs': scenarios.seedDocs,
  'open-docs': scenarios.openDocs
}

const OPTIONS = {
  url: { type: 'string' },
  query: { type: 'string', default: '' },
  rooms: { type: 'string', default: '10' },
  clients: { type: 'string', default: '5' },
  writers: { type: 'string', default: '1' },
  rate: { type: 'string', default: '10' },
  duration: { type: 'string', default: '10' },
  warmup: { type: 'string', default: '1' },
  'drain-timeout': { type: 'string', default: '5' },
  'connect-timeout': { type: 'string', default: '20' },
  'connect-concurrency': { type: 'string', default: '64' },
  replica: { type: 'string', default: 'lazy' },
  deflate: { type: 'boolean', default: false },
  socket: { type: 'string', default: 'lean' },
  spread: { type: 'string', default: 'rooms' },
  seed: { type: 'string', default: '1' },
  factor: { type: 'string', default: '1.3' },
  steps: { type: 'string', default: '12' },
  refine: { type: 'string', default: '2' },
  settle: { type: 'string', default: '1' },
  'p99-bound': { type: 'string', default: '100' },
  'relay-presence': { type: 'boolean', default: false },
  room: { type: 'string', default: '' },
  size: { type: 'string', default: '200000' },
  docs: { type: 'string', default: '100' },
  repeat: { type: 'string', default: '1' },
  'no-seed': { type: 'boolean', default: false },
  'server-pid': { type: 'string', default: '0' },
  'clock-ticks': { type: 'string', default: '100' },
  'server-core': { type: 'string', default: '-1' },
  'generator-core': { type: 'string', default: '-1' },
  progress: { type: 'boolean', default: false }
}

const fail = (message) => {
  process.stderr.write(`loadgen: error: ${message}\n`)
  process.exit(2)
}

const number = (values, name, { integer = false, min = 0 } = {}) => {
  const value = Number(values[name])
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min) {
    fail(`--${name} expects ${integer ? 'a whole number' : 'a number'} >= ${min}, got ${JSON.stringify(values[name])}`)
  }
  return value
}

const main = async () => {
  let parsed
  try {
    parsed = parseArgs({ options: OPTIONS, allowPositionals: true })
  } catch (err) {
    fail(err.message)
  }
  const { values, positionals } = parsed
  const scenario = SCENARIOS[positionals[0]]
  if (!scenario) fail(`expected a scenario (${Object.keys(SCENARIOS).join(', ')}), got ${JSON.stringify(positionals[0])}`)
  if (!values.url || !values.url.split(',').every((u) => /^wss?:\/\/[^/]+/.test(u))) fail(`--url expects ws://HOST:PORT/PATH (or several, comma-separated), got ${JSON.stringify(values.url)}`)
  const pids = values['server-pid'].split(',').map((pid) => {
    const value = Number(pid)
    if (!Number.isInteger(value) || value < 0) fail(`--server-pid expects a process id (or several, comma-separated), got ${JSON.stringify(values['server-pid'])}`)
    return value
  })
  if (!['lazy', 'full'].includes(values.replica)) fail('--replica is lazy or full')
  if (!['lean', 'ws'].includes(values.socket)) fail('--socket is lean (the default) or ws')
  const opts = {
    url: values.url,
    query: values.query,
    rooms: number(values, 'rooms', { integer: true, min: 1 }),
    clients: number(values, 'clients', { integer: true, min: 1 }),
    writers: number(values, 'writers', { integer: true }),
    rate: number(values, 'rate', { min: 0.001 }),
    duration: number(values, 'duration', { min: 0.001 }),
    warmup: number(values, 'warmup'),
    drainTimeout: number(values, 'drain-timeout'),
    connectTimeout: number(values, 'connect-timeout', { min: 0.001 }),
    connectConcurrency: number(values, 'connect-concurrency', { integer: true, min: 1 }),
    replica: values.replica,
    deflate: values.deflate,
    socket: values.socket,
    spread: values.spread,
    seed: number(values, 'seed', { integer: true }),
    factor: number(values, 'factor', { min: 1.001 }),
    steps: number(values, 'steps', { integer: true, min: 1 }),
    refine: number(values, 'refine', { integer: true }),
    settle: number(values, 'settle'),
    p99Bound: number(values, 'p99-bound', { min: 0.001 }),
    relayPresence: values['relay-presence'],
    room: values.room,
    size: number(values, 'size', { integer: true }),
    docs: number(values, 'docs', { integer: true, min: 1 }),
    repeat: number(values, 'repeat', { integer: true, min: 1 }),
    progress: values.progress,
    meter: {
      serverPids: pids.filter((pid) => pid > 0),
      clockTicks: number(values, 'clock-ticks', { integer: true, min: 1 }),
      serverCore: number(values, 'server-core', { integer: true, min: -1 }),
      generatorCore: number(values, 'generator-core', { integer: true, min: -1 })
    }
  }
  if (!['rooms', 'clients'].includes(opts.spread)) fail(`--spread expects rooms or clients, got ${JSON.stringify(opts.spread)}`)
  if (opts.writers > opts.clients) fail(`--writers (${opts.writers}) must not exceed --clients (${opts.clients})`)
  opts.seedDocument = !values['no-seed']
  if ((positionals[0] === 'seed-docs' || positionals[0] === 'open-docs') && !opts.room) fail('--room names the documents (ROOM-0, ROOM-1, ...)')
  const report = await scenario(opts)
  process.stdout.write(JSON.stringify(report) + '\n')
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`loadgen: ${err.stack || err}\n`)
    process.exit(1)
  }
)
