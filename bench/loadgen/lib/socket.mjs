// A lean RFC 6455 client socket for the generator: `net` with a reused read buffer (`onread`),
// frames parsed straight from it, every message handed to a synchronous callback.
//
// The generator receives tens of thousands of small messages per second on one core; through
// the `ws` package each TCP read passes Node's stream machinery before the frame parser, which
// is most of the generator's cost per message. This socket skips that. `ws` stays selectable
// (`--socket ws`, and always with --deflate), to cross-check the two.
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
const OP_CONTINUATION = 0x0
const OP_TEXT = 0x1
const OP_BINARY = 0x2
const OP_CLOSE = 0x8
const OP_PING = 0x9
const OP_PONG = 0xa
const MAX_MESSAGE = 256 * 1024 * 1024
export const CONNECTING = 0
export const OPEN = 1
export const CLOSED = 3

let maskSeed = randomBytes(4).readUInt32LE(0)
const nextMask = () => {
  // xorshift32: masks need not be secret here, only present (RFC 6455 5.3)
  maskSeed ^= maskSeed << 13
  maskSeed ^= maskSeed >>> 17
  maskSeed ^= maskSeed << 5
  return maskSeed >>> 0
}

/** One final, masked client frame. */
export const encodeFrame = (opcode, payload) => {
  const n = payload.length
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10
  const frame = Buffer.allocUnsafe(head + 4 + n)
  frame[0] = 0x80 | opcode
  if (n < 126) {
    frame[1] = 0x80 | n
  } else if (n < 65536) {
    frame[1] = 0x80 | 126
    frame.writeUInt16BE(n, 2)
  } else {
    frame[1] = 0x80 | 127
    frame.writeUInt32BE(Math.floor(n / 2 ** 32), 2)
    frame.writeUInt32BE(n >>> 0, 6)
  }
  const mask = nextMask()
  frame.writeUInt32BE(mask, head)
  const m0 = mask >>> 24
  const m1 = (mask >>> 16) & 0xff
  const m2 = (mask >>> 8) & 0xff
  const m3 = mask & 0xff
  const at = head + 4
  let i = 0
  for (; i + 3 < n; i += 4) {
    frame[at + i] = payload[i] ^ m0
    frame[at + i + 1] = payload[i + 1] ^ m1
    frame[at + i + 2] = payload[i + 2] ^ m2
    frame[at + i + 3] = payload[i + 3] ^ m3
  }
  const masks = [m0, m1, m2, m3]
  for (; i < n; i++) frame[at + i] = payload[i] ^ masks[i & 3]
  return frame
}

/**
 * Feed it bytes, get complete messages: `onMessage(opcode, payload)` with a view that is valid
 * only during the call (copy what you keep). Pure: no I/O.
 */
export class FrameParser {
  constructor (onMessage) {
    this.onMessage = onMessage
    this.rest = null // bytes of an incomplete frame, copied
    this.parts = null // payloads of a fragmented message, copied
    this.opcode = 0
  }

  feed (chunk) {
    let buf = chunk
    if (this.rest !== null) {
      buf = Buffer.concat([this.rest, chunk])
      this.rest = null
    }
    const end = buf.length
    let pos = 0
    while (end - pos >= 2) {
      const b0 = buf[pos]
      const b1 = buf[pos + 1]
      let n = b1 & 0x7f
      let head = 2
      if (n === 126) {
        if (end - pos < 4) break
        n = buf.readUInt16BE(pos + 2)
        head = 4
      } else if (n === 127) {
        if (end - pos < 10) break
        n = buf.readUInt32BE(pos + 2) * 2 ** 32 + buf.readUInt32BE(pos + 6)
        head = 10
      }
      if (n > MAX_MESSAGE) throw new Error(`frame of ${n} bytes`)
      if (b1 & 0x80) throw new Error('masked frame from the server')
      if (end - pos < head + n) break
      const payload = buf.subarray(pos + head, pos + head + n)
      pos += head + n
      this.frame(b0, payload)
    }
    if (pos < end) this.rest = Buffer.from(buf.subarray(pos))
  }

  frame (b0, payload) {
    const opcode = b0 & 0x0f
    const fin = b0 & 0x80
    if (b0 & 0x70) throw new Error('reserved bits set (no extension was negotiated)')
    if (opcode >= 0x8) return this.onMessage(opcode, payload)
    if (opcode !== OP_CONTINUATION) {
      if (fin) return this.onMessage(opcode, payload)
      this.opcode = opcode
      this.parts = [Buffer.from(payload)]
      return
    }
    if (this.parts === null) throw new Error('continuation frame without a message')
    this.parts.push(Buffer.from(payload))
    if (fin) {
      const whole = Buffer.concat(this.parts)
      this.parts = null
      this.onMessage(this.opcode, whole)
    }
  }
}

/** A client WebSocket over `net`; `onmessage(data)` gets each binary message as a transient view. */
export class LeanSocket {
  constructor (url, { handshakeTimeout = 10000 } = {}) {
    const parts = new URL(url)
    if (parts.protocol !== 'ws:') throw new Error(`only ws:// URLs, not ${url}`)
    this.readyState = CONNECTING
    this.onopen = () => {}
    this.onmessage = () => {}
    this.onclose = () => {}
    this.onerror = () => {}
    this.key = randomBytes(16).toString('base64')
    this.head = null
    this.closeCode = 1006
    this.closeReason = ''
    this.parser = new FrameParser((opcode, payload) => this.message(opcode, payload))
    const host = parts.hostname
    const port = Number(parts.port || 80)
    this.socket = net.connect({
      host,
      port,
      noDelay: true,
      onread: { buffer: Buffer.allocUnsafe(256 * 1024), callback: (n, buf) => this.read(buf.subarray(0, n)) }
    })
    this.timer = setTimeout(() => this.fail(new Error('handshake timeout')), handshakeTimeout)
    this.socket.on('connect', () => {
      this.socket.write(`GET ${parts.pathname}${parts.search} HTTP/1.1\r\nHost: ${host}:${port}\r\n` +
        'Upgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Key: ${this.key}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
    })
    this.socket.on('error', (err) => this.fail(err))
    this.socket.on('close', () => this.finish())
  }

  read (chunk) {
    try {
      if (this.readyState === CONNECTING) {
        chunk = this.handshake(chunk)
        if (chunk === null || chunk.length === 0) return
      }
      this.parser.feed(chunk)
    } catch (err) {
      this.closeCode = 1002
      this.closeReason = err.message
      this.fail(err)
    }
  }

  handshake (chunk) {
    this.head = this.head === null ? Buffer.from(chunk) : Buffer.concat([this.head, chunk])
    const end = this.head.indexOf('\r\n\r\n')
    if (end < 0) {
      if (this.head.length > 65536) throw new Error('handshake response too long')
      return null
    }
    const lines = this.head.subarray(0, end).toString('latin1').split('\r\n')
    if (!/^HTTP\/1\.1 101 /.test(lines[0])) throw new Error(`handshake refused: ${lines[0]}`)
    const headers = {}
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':')
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
    }
    const accept = createHash('sha1').update(this.key + GUID).digest('base64')
    if (headers['sec-websocket-accept'] !== accept) throw new Error('bad Sec-WebSocket-Accept')
    if (headers['sec-websocket-extensions']) throw new Error('the server negotiated an extension we did not offer')
    const rest = this.head.subarray(end + 4)
    this.head = null
    clearTimeout(this.timer)
    this.readyState = OPEN
    this.onopen()
    return Buffer.from(rest)
  }

  message (opcode, payload) {
    if (opcode === OP_BINARY || opcode === OP_TEXT) {
      this.onmessage(payload)
    } else if (opcode === OP_PING) {
      this.write(OP_PONG, payload)
    } else if (opcode === OP_CLOSE) {
      this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005
      this.closeReason = payload.subarray(2).toString('utf8')
      this.write(OP_CLOSE, payload.subarray(0, 2))
      this.socket.end()
    }
  }

  write (opcode, payload) {
    if (this.readyState === OPEN && this.socket.writable) this.socket.write(encodeFrame(opcode, payload))
  }

  send (data) {
    this.write(OP_BINARY, data)
  }

  close (code = 1000) {
    if (this.readyState === OPEN) {
      const payload = Buffer.allocUnsafe(2)
      payload.writeUInt16BE(code, 0)
      this.write(OP_CLOSE, payload)
      this.closeCode = code
      this.socket.end()
    } else {
      this.socket.destroy()
    }
  }

  fail (err) {
    const opening = this.readyState === CONNECTING
    if (opening) this.onerror(err)
    this.socket.destroy()
    this.finish()
  }

  finish () {
    if (this.readyState === CLOSED) return
    clearTimeout(this.timer)
    this.readyState = CLOSED
    this.onclose(this.closeCode, this.closeReason)
  }
}
