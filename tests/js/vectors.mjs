// Wire-format vectors made by the real y-protocols / lib0 / yjs encoders, printed as JSON.
//
//   node vectors.mjs > protocol_vectors.json
//
// Deterministic: fixed client ids, no clocks or random numbers in the output. The Python tests
// check that collab.protocol decodes each to the expected values and re-encodes identical bytes.

import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'
import * as authProtocol from 'y-protocols/auth'
import * as awarenessProtocol from 'y-protocols/awareness'

const MESSAGE_SYNC = 0
const MESSAGE_AWARENESS = 1
const MESSAGE_AUTH = 2
const MESSAGE_QUERY_AWARENESS = 3

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const frame = (write) => {
  const encoder = encoding.createEncoder()
  write(encoder)
  return encoding.toUint8Array(encoder)
}

function docWith (clientID, edits) {
  const doc = new Y.Doc()
  doc.clientID = clientID
  const text = doc.getText('text')
  for (const [index, insert, remove] of edits) {
    if (remove) text.delete(index, remove)
    if (insert) text.insert(index, insert)
  }
  return doc
}

const vectors = { varuints: [], strings: [], messages: [], awareness: [] }

// --- varuints and strings --------------------------------------------------------------------

for (const value of [0, 1, 127, 128, 255, 300, 16383, 16384, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
  2 ** 32, 2 ** 35 + 7, 2 ** 49, 2 ** 53 - 1]) {
  vectors.varuints.push({ value, hex: hex(frame((e) => encoding.writeVarUint(e, value))) })
}

const longText = 'long ✓ '.repeat(40) // past lib0's short-string path, through TextEncoder
for (const text of ['', 'a', 'héllo wörld', '日本語のテキスト', '🎉 emoji 👩‍💻', 'tab\tnew\nline', longText]) {
  vectors.strings.push({ text, hex: hex(frame((e) => encoding.writeVarString(e, text))) })
}

// --- sync messages, exactly as y-websocket frames them ----------------------------------------

const empty = new Y.Doc()
empty.clientID = 1
const doc = docWith(123456789, [[0, 'Hello, world'], [5, '', 7], [5, ' Yjs ✓']])
const other = docWith(4294967295, [[0, 'other client 🎉']])
Y.applyUpdate(doc, Y.encodeStateAsUpdate(other))
const partialSv = Y.encodeStateVector(other)

function syncVector (name, kind, payload, write) {
  vectors.messages.push({ name, kind, payload: hex(payload), hex: hex(frame(write)) })
}

syncVector('step1 of an empty document', 'step1', Y.encodeStateVector(empty), (e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeSyncStep1(e, empty)
})
syncVector('step1 with two clients', 'step1', Y.encodeStateVector(doc), (e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeSyncStep1(e, doc)
})
syncVector('step2 with the whole document', 'step2', Y.encodeStateAsUpdate(doc), (e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeSyncStep2(e, doc)
})
syncVector('step2 against a state vector', 'step2', Y.encodeStateAsUpdate(doc, partialSv), (e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeSyncStep2(e, doc, partialSv)
})
syncVector('step2 of an empty document', 'step2', Y.encodeStateAsUpdate(empty), (e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeSyncStep2(e, empty)
})
const bigUpdate = Y.encodeStateAsUpdate(docWith(7, [[0, 'x'.repeat(17000)]]))
for (const [name, update] of [['small update', Y.encodeStateAsUpdate(other)],
  ['update with a three-byte length', bigUpdate]]) {
  syncVector(name, 'update', update, (e) => {
    encoding.writeVarUint(e, MESSAGE_SYNC)
    syncProtocol.writeUpdate(e, update)
  })
}
// What the engines must agree on: the text and state vector of a whole-document update.
vectors.documents = [doc, other, empty].map((d) => ({
  update: hex(Y.encodeStateAsUpdate(d)),
  text: d.getText('text').toString(),
  state_vector: Object.fromEntries([...Y.decodeStateVector(Y.encodeStateVector(d))]
    .map(([client, clock]) => [String(client), clock]))
}))
vectors.messages.push({
  name: 'query awareness',
  kind: 'query-awareness',
  hex: hex(frame((e) => encoding.writeVarUint(e, MESSAGE_QUERY_AWARENESS)))
})
for (const reason of ['', 'no write access to “notes” ✗']) {
  vectors.messages.push({
    name: `auth permission denied ${JSON.stringify(reason)}`,
    kind: 'auth-denied',
    reason,
    hex: hex(frame((e) => {
      encoding.writeVarUint(e, MESSAGE_AUTH)
      authProtocol.writePermissionDenied(e, reason)
    }))
  })
}

// --- awareness ------------------------------------------------------------------------------

function awarenessVector (name, awareness, clients, states = awareness.states) {
  const payload = awarenessProtocol.encodeAwarenessUpdate(awareness, clients, states)
  const entries = clients.map((client) => ({
    client_id: client,
    clock: awareness.meta.get(client)?.clock ?? 0,
    state: JSON.stringify(states.get(client) ?? null)
  }))
  vectors.awareness.push({
    name,
    entries,
    payload: hex(payload),
    hex: hex(frame((e) => {
      encoding.writeVarUint(e, MESSAGE_AWARENESS)
      encoding.writeVarUint8Array(e, payload)
    }))
  })
}

const presenceDoc = new Y.Doc()
presenceDoc.clientID = 4000000000
const awareness = new awarenessProtocol.Awareness(presenceDoc)
clearInterval(awareness._checkInterval)
for (let i = 0; i < 200; i++) awareness.setLocalStateField('tick', i) // a clock past one byte
awareness.setLocalState({
  user: { name: 'Zoë 🎨', color: '#30bced' },
  cursor: { anchor: 12, head: 345678 },
  flags: [true, false, null],
  ratio: 0.5
})
const remote = new Y.Doc()
remote.clientID = 17
const remoteAwareness = new awarenessProtocol.Awareness(remote)
clearInterval(remoteAwareness._checkInterval)
remoteAwareness.setLocalState({ name: 'remote' })
awarenessProtocol.applyAwarenessUpdate(awareness,
  awarenessProtocol.encodeAwarenessUpdate(remoteAwareness, [17]), 'test')

awarenessVector('one local state', awareness, [presenceDoc.clientID])
awarenessVector('two states', awareness, [presenceDoc.clientID, 17])
awarenessVector('no states (a keepalive)', awareness, [])
awarenessProtocol.removeAwarenessStates(awareness, [17], 'test')
awarenessVector('a removal', awareness, [17])
awareness.setLocalState(null)
awarenessVector('the local client leaving', awareness, [presenceDoc.clientID])

remoteAwareness.destroy()
awareness.destroy()
process.stdout.write(JSON.stringify(vectors, null, 1) + '\n')
