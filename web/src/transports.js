// Which transport the provider's next connection uses. WebSockets first; after a few attempts
// in a row that end before the document synced (a proxy that strips or refuses the upgrade, a
// network that kills sockets), the HTTP fallback. While on the fallback, a WebSocket is tried
// now and then on the side, and when one opens the provider moves back to it. `?transport=poll`
// in the page's URL forces the fallback (and `?transport=websocket` forbids it).
//
// The policy only decides; the provider does every connection alike (one provider, two
// transports), so moving between them is a reconnection: both sides sync, nothing is lost or
// doubled.

export const FAILURES_BEFORE_FALLBACK = 2
export const PROBE_INTERVAL_MS = 30000
export const PROBE_TIMEOUT_MS = 5000

/** The transport the page's URL asks for: 'poll', 'websocket' or null (choose by itself). */
export const forcedTransport = (search = globalThis.location ? globalThis.location.search : '') => {
  const value = new URLSearchParams(search).get('transport')
  return value === 'poll' || value === 'websocket' ? value : null
}

/** Opens a WebSocket on the side; resolves whether it opened within `timeoutMs`. */
export const probeWebSocket = (url, timeoutMs = PROBE_TIMEOUT_MS) => new Promise((resolve) => {
  let ws
  const done = (ok) => {
    clearTimeout(timer)
    if (ws) {
      ws.onopen = ws.onerror = ws.onclose = null
      try { ws.close() } catch {}
    }
    resolve(ok)
  }
  const timer = setTimeout(() => done(false), timeoutMs)
  try {
    ws = new WebSocket(url)
  } catch {
    done(false)
    return
  }
  ws.onopen = () => done(true)
  ws.onerror = () => done(false)
  ws.onclose = () => done(false)
})

export class TransportPolicy {
  /**
   * @param {{socket: (room: string) => any, poll: (room: string) => any,
   *   probe: (room: string) => Promise<boolean>, forced?: string|null,
   *   setTimer?: typeof setTimeout, clearTimer?: typeof clearTimeout}} options
   */
  constructor ({
    socket, poll, probe, forced = null,
    setTimer = (fn, ms) => setTimeout(fn, ms), clearTimer = (timer) => clearTimeout(timer)
  }) {
    this.socket = socket
    this.poll = poll
    this.probe = probe
    this.forced = forced
    this.setTimer = setTimer
    this.clearTimer = clearTimer
    this.failures = 0
    this.onFallback = forced === 'poll'
    this.provider = null
    this.probeTimer = null
    this.room = null
    this.current = null
    /** Called with the make function's room for each connection attempt. */
    this.make = (room) => this._make(room)
  }

  /** Watch `provider`: its syncs tell which attempts worked, and it is asked to move back. */
  attach (provider) {
    this.provider = provider
    provider.on('synced', () => {
      if (this.current) this.current.synced = true
      if (this.current && this.current.kind === 'websocket') this.failures = 0
    })
  }

  _make (room) {
    this.room = room
    const kind = this.onFallback ? 'poll' : 'websocket'
    const transport = kind === 'poll' ? this.poll(room) : this.socket(room)
    const attempt = { kind, synced: false }
    this.current = attempt
    const connect = transport.connect.bind(transport)
    transport.connect = (handlers) => connect({
      ...handlers,
      onClose: (info) => {
        this._ended(attempt)
        handlers.onClose(info)
      }
    })
    if (kind === 'poll') this._scheduleProbe()
    return transport
  }

  _ended (attempt) {
    if (attempt.kind !== 'websocket' || attempt.synced || this.forced === 'websocket') return
    this.failures += 1
    if (this.failures >= FAILURES_BEFORE_FALLBACK) this.onFallback = true
  }

  _scheduleProbe () {
    if (this.forced !== null || this.probeTimer !== null) return
    this.probeTimer = this.setTimer(async () => {
      this.probeTimer = null
      if (!this.onFallback) return
      const works = await this.probe(this.room)
      if (!this.onFallback) return
      if (works) {
        this.onFallback = false
        this.failures = 0
        if (this.provider) this.provider.reconnect()
      } else {
        this._scheduleProbe()
      }
    }, PROBE_INTERVAL_MS)
  }

  stop () {
    if (this.probeTimer !== null) this.clearTimer(this.probeTimer)
    this.probeTimer = null
  }
}
