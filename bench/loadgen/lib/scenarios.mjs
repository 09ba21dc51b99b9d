// The scenarios. Each returns a plain object (the JSON report); the benchmark harness renders it.
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { Client, Room, Run, textOf } from './client.mjs'
import { latencySummary, random, Window } from './stats.mjs'
import { Meter, processRss } from './system.mjs'

export const GENERATOR_BOUND_PERCENT = 80
/** Above this share of one core the generator itself may be what limits the numbers. */

const prefix = () => 'lg-' + randomBytes(4).toString('hex')
const round = (x, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits
const now = () => performance.now()

const progress = (enabled, text) => {
  if (enabled && process.stderr.isTTY) process.stderr.write('\r' + text.padEnd(100).slice(0, 100))
}

/** Connect and sync clients, at most `concurrency` in flight; the first client of each room goes
 * first (some servers drop clients that race each other into a room that does not exist yet).
 * Returns each client's connect-to-synced time in ms (failures counted in run.connectionErrors). */
export const openClients = async (run, clients, concurrency = 64) => {
  const times = []
  let failures = 0
  const one = async (client) => {
    const started = (client.startedAt = now())
    try {
      await client.open()
      let timer
      const timeout = new Promise((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error('sync timeout')), run.connectTimeout * 1000)
      })
      try {
        await Promise.race([client.synced, timeout])
      } finally {
        clearTimeout(timer)
      }
      times.push(client.syncedAt - started)
    } catch {
      failures += 1
      run.connectionErrors += 1
      client.close()
    }
  }
  const pool = async (list) => {
    let next = 0
    const worker = async () => {
      while (next < list.length) await one(list[next++])
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, list.length) }, worker))
  }
  const firsts = new Map()
  for (const c of clients) if (!firsts.has(c.room.name)) firsts.set(c.room.name, c)
  const firstSet = new Set(firsts.values())
  await pool([...firstSet])
  await pool(clients.filter((c) => !firstSet.has(c)))
  return { times, failures }
}

const makeRooms = (run, name, rooms, clients, writers, options = {}) => {
  const made = []
  for (let i = 0; i < rooms; i++) {
    const room = new Room(`${name}-${i}`, i)
    for (let j = 0; j < clients; j++) room.clients.push(new Client(run, room, { writer: j < writers, ...options }))
    made.push(room)
  }
  return made
}

const closeClients = (clients) => {
  for (const client of clients) client.close()
}

const closeAll = (rooms) => closeClients(rooms.flatMap((room) => room.clients))

/** Every writer types `rate` edits per second for `duration` seconds on one shared schedule
 * (phases spread at random); returns the seconds spent sending. */
const writeFor = async (run, writers, rate, duration, rng, tick) => {
  const start = now()
  const end = start + duration * 1000
  const interval = 1000 / rate
  const due = writers.map(() => start + rng() * interval)
  const window = run.window
  let nextTick = start
  for (;;) {
    const t = now()
    if (t >= end) break
    let soonest = end
    for (let i = 0; i < writers.length; i++) {
      while (due[i] <= t) {
        const writer = writers[i]
        const lag = t - due[i]
        due[i] += interval
        if (!writer.alive) continue
        writer.edit(rng)
        window.edits += 1
        window.expected += writer.room.live - 1
        if (lag > window.scheduleLagMax) window.scheduleLagMax = lag
      }
      if (due[i] < soonest) soonest = due[i]
    }
    if (tick && t >= nextTick) {
      tick()
      nextTick = t + 250
    }
    await sleep(Math.max(0, soonest - now()))
  }
  return (now() - start) / 1000
}

/** Wait until every expected delivery arrived, or nothing arrived for `timeout` seconds. */
const drain = async (run, timeout) => {
  const window = run.window
  let last = window.delivered + window.gaps
  let changed = now()
  while (window.delivered + window.gaps < window.expected) {
    await sleep(20)
    const seen = window.delivered + window.gaps
    if (seen !== last) {
      last = seen
      changed = now()
    } else if (now() - changed > timeout * 1000) {
      break
    }
  }
}

/** The server's text of a room: what a fresh client syncs. */
const serverText = async (run, room) => {
  const auditor = new Client(run, new Room(room.name, room.index))
  try {
    const { failures } = await openClients(run, [auditor], 1)
    return failures ? null : textOf(auditor.syncPayload)
  } finally {
    auditor.closing = true
    auditor.close()
  }
}

/** Every live client of a room holds the text that a freshly syncing client gets. */
const checkConvergence = async (run, rooms) => {
  const errorsBefore = run.connectionErrors
  let converged = 0
  const diverged = []
  for (const room of rooms) {
    const reference = await serverText(run, room)
    const texts = new Set(room.clients.filter((c) => c.alive).map((c) => c.finalText()))
    if (reference !== null && [...texts].every((t) => t === reference)) converged += 1
    else diverged.push(room.name)
  }
  run.connectionErrors = errorsBefore
  return { converged: diverged.length === 0, rooms_converged: converged, rooms_checked: rooms.length, diverged_rooms: diverged.slice(0, 10) }
}

/** One measured window of typing at `rate` per writer. */
const measure = async (run, meterOptions, writers, rate, options, rng, label) => {
  run.window = new Window()
  const errorsBefore = run.connectionErrors
  const meter = new Meter(meterOptions).start()
  const tick = () => {
    const w = run.window
    progress(options.progress, `${label} edits ${w.edits} delivered ${w.delivered} lost-so-far ${w.expected - w.delivered}`)
  }
  const sent = await writeFor(run, writers, rate, options.duration, rng, tick)
  await drain(run, options.drainTimeout)
  const machine = meter.stop()
  const summary = { ...run.window.summary(sent), ...machine }
  summary.connection_errors = run.connectionErrors - errorsBefore
  markBounds(summary)
  perMessage(summary)
  return summary
}

/** Type for `options.warmup` seconds first, unmeasured, so that neither the server nor the
 * generator is measured while it warms up (JIT, caches, the first allocations). */
const warmUp = async (run, writers, rate, options, rng) => {
  if (!options.warmup) return
  run.window = new Window()
  await writeFor(run, writers, rate, options.warmup, rng)
  await drain(run, options.drainTimeout)
}

export const CONTENDED_PERCENT = 20
/** More than this share of a measured core used by other processes: the machine got in the way. */

/** Flag a window whose figures the generator (its own CPU) or the machine (others' CPU on the
 * measured cores) may have limited. */
const markBounds = (summary) => {
  summary.generator_bound = summary.generator_cpu_percent > GENERATOR_BOUND_PERCENT
  const others = (core, own) => (core === null || own === undefined ? 0 : core - own)
  summary.contended = others(summary.server_core_busy_percent, summary.server_cpu_percent) > CONTENDED_PERCENT ||
    others(summary.generator_core_busy_percent, summary.generator_cpu_percent) > CONTENDED_PERCENT
  return summary
}

/** Server CPU per edit and per message it delivered (echoes included: the work it did). */
const perMessage = (summary) => {
  if (summary.server_cpu_seconds === undefined) return
  const us = (n) => (n > 0 ? round((summary.server_cpu_seconds * 1e6) / n) : null)
  summary.server_cpu_us_per_edit = us(summary.edits_sent)
  summary.server_cpu_us_per_message = us(summary.messages_received)
}

/** R rooms x C clients, W writers per room at a fixed rate: latency to every receiver. The big
 * room is this with one room. */
export const fanout = async (opts) => {
  const run = new Run(opts)
  const rng = random(opts.seed)
  const rooms = makeRooms(run, prefix(), opts.rooms, opts.clients, opts.writers)
  const started = now()
  await openClients(run, rooms.flatMap((r) => r.clients), opts.connectConcurrency)
  const connectSeconds = (now() - started) / 1000
  const connectErrors = run.connectionErrors
  const writers = rooms.flatMap((r) => r.clients).filter((c) => c.writerId >= 0 && c.alive)
  try {
    await warmUp(run, writers, opts.rate, opts, rng)
    const summary = await measure(run, opts.meter, writers, opts.rate, opts, rng, 'fanout')
    progress(opts.progress, '')
    return {
      scenario: 'fanout', ...base(opts), ...summary, connect_seconds: round(connectSeconds, 3),
      connect_errors: connectErrors, close_reasons: run.closeReasons, undecodable_messages: run.undecodable,
      ...(await checkConvergence(run, rooms))
    }
  } finally {
    closeAll(rooms)
  }
}

const base = (opts) => ({
  url: opts.url, rooms: opts.rooms, clients: opts.clients, writers: opts.writers, rate: opts.rate,
  duration: opts.duration, replica: opts.replica, deflate: opts.deflate
})

/** Raise the per-writer rate step by step on the same connections until p99 passes the bound,
 * a delivery is lost, a connection fails or the generator saturates; then narrow the highest
 * rate held down by bisection between the last good and the first bad step. */
export const ramp = async (opts) => {
  const run = new Run(opts)
  const rng = random(opts.seed)
  const rooms = makeRooms(run, prefix(), opts.rooms, opts.clients, opts.writers)
  await openClients(run, rooms.flatMap((r) => r.clients), opts.connectConcurrency)
  const writers = rooms.flatMap((r) => r.clients).filter((c) => c.writerId >= 0 && c.alive)
  const steps = []
  let held = null
  let failedRate = null
  let stopReason = 'steps exhausted'
  let limitedBy = 'steps'
  const verdict = (s) => {
    if (s.connection_errors) return 'connections failed'
    if (s.lost) return `${s.lost} deliveries lost`
    if (s.latency_ms.p99 > opts.p99Bound) return `p99 ${s.latency_ms.p99} ms > ${opts.p99Bound} ms`
    return null
  }
  const step = async (rate) => {
    const s = await measure(run, opts.meter, writers, rate, opts, rng, `step ${steps.length + 1} @ ${Math.round(rate * writers.length)}/s`)
    s.rate_per_writer = round(rate, 3)
    s.failed = verdict(s)
    steps.push(s)
    await sleep(opts.settle * 1000) // let queues from a failed step drain before the next
    return s
  }
  try {
    if (run.connectionErrors) stopReason = 'connection errors while connecting'
    await warmUp(run, writers, opts.rate, opts, rng)
    let rate = opts.rate
    for (let i = 0; i < opts.steps && !run.connectionErrors; i++) {
      const s = await step(rate)
      if (s.failed) {
        failedRate = rate
        stopReason = s.failed
        limitedBy = s.generator_bound ? 'generator' : 'server'
        break
      }
      held = s
      if (s.generator_bound) {
        stopReason = `generator saturated (${s.generator_cpu_percent} % of a core)`
        limitedBy = 'generator'
        break
      }
      rate *= opts.factor
    }
    for (let i = 0; i < opts.refine && held && failedRate; i++) {
      const rate = Math.sqrt(held.rate_per_writer * failedRate)
      const s = await step(rate)
      if (s.failed) failedRate = rate
      else held = s
    }
    progress(opts.progress, '')
    return {
      scenario: 'ramp', ...base(opts), factor: opts.factor, p99_bound_ms: opts.p99Bound, steps,
      stop_reason: stopReason, limited_by: limitedBy, undecodable_messages: run.undecodable,
      held_edit_rate: held ? held.edit_rate : 0,
      held_delivery_rate: held ? held.delivery_rate : 0,
      held_message_rate: held ? held.message_rate : 0,
      held_latency_ms: held ? held.latency_ms : null,
      held_generator_cpu_percent: held ? held.generator_cpu_percent : null,
      held_server_cpu_percent: held ? held.server_cpu_percent : null,
      ...(await checkConvergence(run, rooms))
    }
  } finally {
    closeAll(rooms)
  }
}

/** N clients in one room, each moving its cursor `rate` times a second (awareness updates). */
export const presence = async (opts) => {
  const run = new Run(opts)
  const rng = random(opts.seed)
  const room = new Room(prefix() + '-presence')
  for (let i = 0; i < opts.clients; i++) {
    const client = new Client(run, room, { presence: true, relayPresence: opts.relayPresence })
    client.awareness.setLocalState({ user: { name: `user ${i}`, color: '#30bced' }, cursor: null })
    room.clients.push(client)
  }
  await openClients(run, room.clients, opts.connectConcurrency)
  const connectErrors = run.connectionErrors
  await sleep(500) // the joins' presence announcements settle before the window opens
  const movers = room.clients.filter((c) => c.alive)
  // every client learnt every other one's presence on joining (the server's dump of the room)
  const knownAtStart = Math.min(...movers.map((c) => c.presenceSeen.size))
  const window = (run.window = new Window())
  const meter = new Meter(opts.meter).start()
  const start = now()
  const end = start + opts.duration * 1000
  const interval = 1000 / opts.rate
  const due = movers.map(() => start + rng() * interval)
  for (;;) {
    const t = now()
    if (t >= end) break
    let soonest = end
    for (let i = 0; i < movers.length; i++) {
      while (due[i] <= t) {
        window.scheduleLagMax = Math.max(window.scheduleLagMax, t - due[i])
        due[i] += interval
        if (!movers[i].alive) continue
        movers[i].movePresence(rng)
        window.edits += 1
        window.expected += room.live - 1
      }
      soonest = Math.min(soonest, due[i])
    }
    await sleep(Math.max(0, soonest - now()))
  }
  const sent = (now() - start) / 1000
  await drain(run, opts.drainTimeout)
  const machine = meter.stop()
  // every client must end up with every other client's last cursor (the awareness renewal that
  // y-protocols sends after 15 s without a change may still be on its way: it is not a move)
  let stale = 0
  for (const client of movers) {
    if (!client.alive) continue
    for (const other of movers) {
      if (other === client || !other.alive || other.lastMoveClock === undefined) continue
      if ((client.presenceSeen.get(other.doc.clientID) ?? -1) < other.lastMoveClock) stale += 1
    }
  }
  closeAll([room])
  const summary = { ...window.summary(sent), ...machine }
  summary.moves_sent = summary.edits_sent
  markBounds(summary)
  perMessage(summary)
  return {
    scenario: 'presence', url: opts.url, clients: opts.clients, rate: opts.rate, duration: opts.duration,
    relay_presence: opts.relayPresence, ...summary, connect_errors: connectErrors,
    connection_errors: run.connectionErrors - connectErrors, stale_presence: stale, converged: stale === 0,
    undecodable_messages: run.undecodable, presence_known_at_start_min: knownAtStart
  }
}

/** `rooms` x `clients` synced connections that send nothing; the server's memory before and
 * after, and its CPU while they idle. */
export const idle = async (opts) => {
  const run = new Run(opts)
  const pid = opts.meter.serverPids[0] || 0 // the idle scenario reads one server's memory
  const name = prefix()
  // one connection first, so rooms' fixed costs and lazy imports are not counted per connection
  const warm = makeRooms(run, name + '-warm', 1, 1, 0)
  await openClients(run, warm[0].clients)
  await sleep(500)
  const before = pid ? processRss(pid) : 0
  const rooms = makeRooms(run, name, opts.rooms, opts.clients, 0)
  const started = now()
  const { failures } = await openClients(run, rooms.flatMap((r) => r.clients), opts.connectConcurrency)
  const connectSeconds = (now() - started) / 1000
  await sleep(1000)
  const meter = new Meter(opts.meter).start()
  await sleep(opts.duration * 1000)
  const machine = meter.stop()
  const after = pid ? processRss(pid) : 0
  const count = opts.rooms * opts.clients
  const errorsWhileIdle = run.connectionErrors - failures
  closeAll([...warm, ...rooms])
  return {
    scenario: 'idle', url: opts.url, connections: count, failed: failures, connect_seconds: round(connectSeconds, 3),
    errors_while_idle: errorsWhileIdle, rss_before_mib: round(before / 2 ** 20),
    rss_after_mib: round(after / 2 ** 20), kib_per_connection: pid ? round((after - before) / count / 1024) : null,
    idle_server_cpu_percent: machine.server_cpu_percent ?? null, ...markBounds(machine)
  }
}

/** Plain prose-like text of `size` characters. */
export const prose = (size, seed = 1) => {
  const rng = random(seed)
  const words = ['lorem', 'ipsum', 'dolor', 'sit', 'amet', 'collab', 'yjs', 'text', 'edit', 'sync']
  const parts = []
  let total = 0
  while (total < size) {
    const word = words[Math.floor(rng() * words.length)] + (rng() > 0.1 ? ' ' : '\n')
    parts.push(word)
    total += word.length
  }
  return parts.join('').slice(0, size)
}

/** Write a `size`-character document into `room` and wait until a fresh client syncs all of
 * it. Returns the writer, still connected: servers without a store drop a document when its
 * last client leaves. */
const seedDocument = async (run, room, size, timeout = 60) => {
  const target = new Room(room)
  const writer = new Client(run, target, { writer: true })
  const { failures } = await openClients(run, [writer], 1)
  if (failures) throw new Error(`cannot connect to seed ${room}`)
  writer.insert(prose(size))
  const deadline = now() + timeout * 1000
  for (;;) {
    const text = await serverText(run, target)
    if (text !== null && text.length >= size) return writer
    if (now() > deadline) throw new Error(`the server did not hold the ${size}-character document in time`)
    await sleep(50)
  }
}

/** `clients` connect at once to one room holding a `size`-character document (seeded first,
 * unless it is stored already) and sync it: the time until the last one has its sync step 2.
 * `repeat` storms run one after the other on the same document. */
export const join = async (opts) => {
  const run = new Run(opts)
  const room = opts.room || prefix() + '-join'
  const seedStart = now()
  const keeper = !opts.seedDocument ? null : await seedDocument(run, room, opts.size)
  const seedSeconds = (now() - seedStart) / 1000
  const storms = []
  try {
    for (let r = 0; r < opts.repeat; r++) {
      const target = new Room(room)
      const clients = Array.from({ length: opts.clients }, () => new Client(run, target))
      const meter = new Meter(opts.meter).start()
      const started = now()
      const { failures } = await openClients(run, clients, opts.clients)
      const allSynced = clients.every((c) => c.syncedAt) ? Math.max(...clients.map((c) => c.syncedAt)) - started : null
      const machine = meter.stop()
      const lengths = [...new Set(clients.filter((c) => c.syncPayload).map((c) => textOf(c.syncPayload).length))].sort()
      closeClients(clients)
      storms.push({
        failed: failures, all_synced_ms: allSynced === null ? null : round(allSynced, 3),
        sync_ms: latencySummary(clients.filter((c) => c.syncedAt).map((c) => c.syncedAt - started)),
        document_lengths: lengths, ok: failures === 0 && lengths.length === 1 && lengths[0] === opts.size,
        ...markBounds(machine)
      })
    }
  } finally {
    if (keeper) keeper.close()
  }
  const times = storms.map((s) => s.all_synced_ms).filter((t) => t !== null).sort((a, b) => a - b)
  return {
    scenario: 'join', url: opts.url, room, size: opts.size, clients: opts.clients, seeded: opts.seedDocument,
    seed_seconds: round(seedSeconds, 3), storms, ok: storms.every((s) => s.ok),
    generator_bound: storms.some((s) => s.generator_bound), contended: storms.some((s) => s.contended),
    all_synced_ms: times.length ? times[Math.floor((times.length - 1) / 2)] : null
  }
}

/** Write `docs` documents of `size` characters each (`name-0` ...), `concurrency` at a time,
 * each by a client that closes once a fresh client syncs the document back. */
export const seedDocs = async (opts) => {
  const run = new Run(opts)
  const started = now()
  let next = 0
  let failed = 0
  const worker = async () => {
    while (next < opts.docs) {
      const room = `${opts.room}-${next++}`
      try {
        const writer = await seedDocument(run, room, opts.size)
        writer.close()
      } catch {
        failed += 1
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(opts.connectConcurrency, opts.docs) }, worker))
  return { scenario: 'seed-docs', url: opts.url, docs: opts.docs, size: opts.size, failed, seconds: round((now() - started) / 1000, 3) }
}

/** One client per stored document, all opening as fast as they can (`concurrency` in flight):
 * connections per second and each client's connect-to-synced time. */
export const openDocs = async (opts) => {
  const run = new Run(opts)
  const clients = Array.from({ length: opts.docs }, (_, i) => new Client(run, new Room(`${opts.room}-${i}`, i), { wantLength: opts.size }))
  const meter = new Meter(opts.meter).start()
  const started = now()
  const { failures } = await openClients(run, clients, opts.connectConcurrency)
  const synced = clients.filter((c) => c.syncedAt)
  let timer
  await Promise.race([
    Promise.all(synced.map((c) => c.content)),
    new Promise((resolve) => { timer = setTimeout(resolve, opts.connectTimeout * 1000) })
  ])
  clearTimeout(timer)
  const complete = synced.filter((c) => c.contentAt)
  const seconds = (Math.max(...complete.map((c) => c.contentAt), started) - started) / 1000
  const machine = meter.stop()
  closeClients(clients)
  return {
    scenario: 'open-docs', url: opts.url, docs: opts.docs, size: opts.size, concurrency: opts.connectConcurrency,
    failed: failures, complete: complete.length, ok: failures === 0 && complete.length === opts.docs,
    seconds: round(seconds, 3), connections_per_second: round(complete.length / Math.max(seconds, 1e-9)),
    sync_ms: latencySummary(complete.map((c) => c.contentAt - c.startedAt)),
    answered_before_content: synced.filter((c) => c.contentAt > c.syncedAt).length, ...markBounds(machine)
  }
}
