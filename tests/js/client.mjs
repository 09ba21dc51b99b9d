// A stock y-websocket client driven over stdin/stdout, one JSON object per line.
//
//   node client.mjs SERVER_URL ROOM [PARAMS_JSON]
//
// Commands (stdin): {"id": 1, "cmd": "insert", "index": 0, "text": "hi"}; every command gets
// one reply {"id": 1, "ok": true, ...} or {"id": 1, "ok": false, "error": "..."}.
// Events (stdout, no id): {"event": "status" | "sync" | "awareness" | "closed", ...}.
//
// The provider is the unmodified WebsocketProvider from the npm package; the only addition is
// a WebSocket subclass that counts the frames the client sends and the server's durable acks
// (sync updates that change nothing), so a test can wait until the server has stored an edit.

import * as readline from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as decoding from 'lib0/decoding'

const [serverUrl, room, paramsJson] = process.argv.slice(2)
if (!serverUrl || !room) {
  process.stderr.write('usage: node client.mjs SERVER_URL ROOM [PARAMS_JSON]\n')
  process.exit(2)
}

const FIELD = 'text'

/** Frames on the current connection: sync step 2 / update frames sent, and acks received. */
const counters = { sent: 0, acked: 0, received: 0 }
/** The kind of the incoming frame the provider is handling right now (set before it does). */
let incoming = null

class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    counters.sent = 0
    counters.acked = 0
    // Registered before the provider's onmessage, so it runs first for every frame.
    this.addEventListener('message', (event) => {
      counters.received++
      incoming = frameKind(new Uint8Array(event.data))
    })
  }

  send (data, ...rest) {
    const kind = frameKind(new Uint8Array(data))
    if (kind === 'step2' || kind === 'update') counters.sent++
    return super.send(data, ...rest)
  }
}

function frameKind (bytes) {
  try {
    const decoder = decoding.createDecoder(bytes)
    const type = decoding.readVarUint(decoder)
    if (type !== 0) return ['sync', 'awareness', 'auth', 'query-awareness'][type] ?? 'unknown'
    return ['step1', 'step2', 'update'][decoding.readVarUint(decoder)] ?? 'unknown'
  } catch {
    return 'malformed'
  }
}

const doc = new Y.Doc()
const ytext = doc.getText(FIELD)
const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: CountingWebSocket,
  disableBc: true,
  // ask for durable acks (wait_saved counts them); extra URL parameters such as a token
  params: { acks: '1', ...JSON.parse(paramsJson || '{}') }
})
const awareness = provider.awareness

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

// A sync update from the server that leaves the document as it was is the ack of one of ours.
doc.on('afterTransaction', (tr) => {
  if (tr.origin !== provider || incoming !== 'update') return
  const grew = [...tr.afterState].some(([client, clock]) => tr.beforeState.get(client) !== clock)
  if (!grew && tr.deleteSet.clients.size === 0) counters.acked++
  notify()
})

provider.on('status', ({ status }) => { emit({ event: 'status', status }); notify() })
provider.on('sync', (synced) => { emit({ event: 'sync', synced }); notify() })
provider.on('connection-close', (event) => {
  emit({ event: 'closed', code: event?.code ?? null, reason: event?.reason ?? '' })
})
awareness.on('change', ({ added, updated, removed }) => {
  emit({ event: 'awareness', added, updated, removed })
  notify()
})
ytext.observe(() => notify())

function statesObject () {
  const out = {}
  for (const [client, state] of awareness.getStates()) out[client] = state
  return out
}

// --- waiting for conditions ------------------------------------------------------------------

const waiters = new Set()

function notify () {
  for (const waiter of [...waiters]) {
    if (waiter.check()) {
      waiters.delete(waiter)
      clearTimeout(waiter.timer)
      waiter.resolve()
    }
  }
}

function waitFor (check, timeoutSeconds, what) {
  if (check()) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const waiter = { check, resolve }
    waiter.timer = setTimeout(() => {
      waiters.delete(waiter)
      reject(new Error(`timed out after ${timeoutSeconds} s waiting for ${what}`))
    }, timeoutSeconds * 1000)
    waiters.add(waiter)
  })
}

// Acks arrive asynchronously with no doc event when nothing else changes; poll cheaply too.
setInterval(notify, 20).unref()

// --- commands --------------------------------------------------------------------------------

const commands = {
  info: () => ({
    clientId: doc.clientID,
    status: provider.wsconnected ? 'connected' : (provider.wsconnecting ? 'connecting' : 'disconnected'),
    synced: provider.synced,
    ...counters
  }),
  text: () => ({ text: ytext.toString() }),
  insert: ({ index, text }) => {
    ytext.insert(index ?? ytext.length, text)
    return { length: ytext.length }
  },
  append: ({ text }) => {
    ytext.insert(ytext.length, text)
    return { length: ytext.length }
  },
  delete: ({ index, length }) => {
    ytext.delete(index, length)
    return { length: ytext.length }
  },
  set_awareness: ({ state }) => {
    awareness.setLocalState(state)
    return { clientId: doc.clientID }
  },
  awareness: () => ({ states: statesObject() }),
  // The connection dies without a close frame or a goodbye (a network cut); the provider
  // notices and reconnects by itself, as it would after a real outage.
  drop: () => {
    if (!provider.ws) throw new Error('not connected')
    provider.ws.terminate()
    return {}
  },
  // The workaround y-websocket's own issue tracker gives for a reconnecting client staying
  // invisible to others: re-announce the local state (a new clock) on every connect.
  reannounce_on_connect: () => {
    provider.on('status', ({ status }) => {
      if (status === 'connected' && awareness.getLocalState() !== null) {
        awareness.setLocalState(awareness.getLocalState())
      }
    })
    return {}
  },
  disconnect: () => { provider.disconnect(); return {} },
  connect: () => { provider.connect(); return {} },
  wait_synced: async ({ timeout = 10 }) => {
    await waitFor(() => provider.synced, timeout, 'sync')
    return { text: ytext.toString() }
  },
  wait_text: async ({ contains = [], equals, timeout = 10 }) => {
    const check = () => {
      const text = ytext.toString()
      return contains.every((part) => text.includes(part)) && (equals === undefined || text === equals)
    }
    await waitFor(check, timeout, `text containing ${JSON.stringify(contains)}` +
      (equals === undefined ? '' : ` equal to ${JSON.stringify(equals)}`) +
      ` (have ${JSON.stringify(ytext.toString())})`)
    return { text: ytext.toString() }
  },
  // present: client ids that must have a state; absent: client ids that must not.
  wait_awareness: async ({ present = [], absent = [], timeout = 10 }) => {
    const check = () => {
      const states = awareness.getStates()
      return present.every((id) => states.has(id)) && absent.every((id) => !states.has(id))
    }
    await waitFor(check, timeout, `awareness with ${JSON.stringify(present)} and without ${JSON.stringify(absent)}`)
    return { states: statesObject() }
  },
  // Every step 2 / update sent on this connection has been acknowledged as stored.
  wait_saved: async ({ timeout = 10 }) => {
    await waitFor(() => provider.synced && counters.acked >= counters.sent, timeout,
      `acks (${JSON.stringify(counters)})`)
    return { ...counters }
  },
  exit: () => {
    provider.destroy()
    setImmediate(() => process.exit(0))
    return {}
  }
}

const input = readline.createInterface({ input: process.stdin })
input.on('line', async (line) => {
  if (!line.trim()) return
  let request
  try {
    request = JSON.parse(line)
  } catch (err) {
    emit({ ok: false, error: `not JSON: ${err.message}` })
    return
  }
  const handler = commands[request.cmd]
  try {
    if (!handler) throw new Error(`unknown command ${request.cmd}`)
    emit({ id: request.id, ok: true, ...(await handler(request)) })
  } catch (err) {
    emit({ id: request.id, ok: false, error: err.message })
  }
})
// The test runner went away: do not linger.
input.on('close', () => process.exit(0))
