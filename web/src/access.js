// Access through a signed token (a share link). The token comes in the link's fragment
// (#token=…: never sent to the server with the page, so it is not in its request logs) or its
// query, is kept per document in this browser so that the document opens again from the home
// page, and goes with every connection (?token= on the WebSocket and the HTTP fallback, which a
// browser cannot give headers) and every API request (Authorization: Bearer).
//
// The page reads the token's claims (without checking them: only the server can) to know at
// once whether it may write and until when; the server's answers stay the truth.

const PARAMETER = 'token'
const key = (room) => `collab:token:${room}`

/** The token a link carries, or null. */
export const tokenInUrl = (href) => {
  const url = new URL(href)
  return new URLSearchParams(url.hash.slice(1)).get(PARAMETER) || url.searchParams.get(PARAMETER) || null
}

/** The link without its token (what the address bar shows once the page has kept it). */
export const withoutToken = (href) => {
  const url = new URL(href)
  url.searchParams.delete(PARAMETER)
  const hash = new URLSearchParams(url.hash.slice(1))
  if (hash.has(PARAMETER)) {
    hash.delete(PARAMETER)
    url.hash = hash.toString()
  }
  return url.href.replace(/#$/, '')
}

/** A share link: the document's page with the token in its fragment. */
export const shareLink = (pageHref, token) => {
  const url = new URL(withoutToken(pageHref))
  url.hash = `${PARAMETER}=${token}`
  return url.href
}

/** The claims of a JWT, unverified; null for anything that is not one. */
export const claimsOf = (token) => {
  try {
    const part = token.split('.')[1]
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=')
    const bytes = Uint8Array.from(atob(base64), c => c.charCodeAt(0))
    const claims = JSON.parse(new TextDecoder().decode(bytes))
    return claims !== null && typeof claims === 'object' && !Array.isArray(claims) ? claims : null
  } catch {
    return null
  }
}

/** Whether `claims` say the token has expired at `now` (ms). */
export const expired = (claims, now = Date.now()) =>
  claims !== null && typeof claims.exp === 'number' && claims.exp * 1000 <= now

/** 'read', 'write', or null when the token does not say (or there is none). */
export const modeOf = (token) => {
  const mode = token ? claimsOf(token)?.mode : null
  return mode === 'read' || mode === 'write' ? mode : null
}

/** The expiry choices a sharer picks from, in seconds, and how they read. */
export const EXPIRIES = [
  { seconds: 3600, label: '1 hour' },
  { seconds: 86400, label: '1 day' },
  { seconds: 7 * 86400, label: '7 days' },
  { seconds: 30 * 86400, label: '30 days' }
]

/** The tokens this browser holds, one per document. */
export class Tokens {
  constructor (storage = globalThis.localStorage) {
    this.storage = storage
  }

  get (room) {
    try {
      return this.storage.getItem(key(room))
    } catch {
      return null
    }
  }

  set (room, token) {
    try {
      this.storage.setItem(key(room), token)
    } catch (err) {
      console.warn('collab: could not keep the link token', err)
    }
  }

  forget (room) {
    this.storage.removeItem(key(room))
  }

  /** Headers for an API request about `room`. */
  headers (room) {
    const token = this.get(room)
    return token ? { Authorization: `Bearer ${token}` } : {}
  }
}
