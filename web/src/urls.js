// Every URL the page uses is relative to where the app is mounted, so that a host application
// may serve it under any prefix (/collab/d/notes as well as /d/notes). The first script of
// index.html (written by build.mjs from `pageOf` below) sets the document's base URL to the
// app's root before anything loads; everything else is resolved against document.baseURI.

/** The app's root path and the document room of a page at `pathname`: "/collab/d/a%20b" →
 * {base: "/collab/", room: "a%20b"}; "/collab/" → {base: "/collab/", room: null}. The room is
 * the raw (still percent-encoded) rest of the path, exactly as the server sees it in /ws/<room>;
 * it may itself contain "/d/", so the first one is the app's.
 * Self-contained: build.mjs inlines its source into index.html. */
export function pageOf (pathname) {
  const at = pathname.indexOf('/d/')
  if (at >= 0 && at + 3 < pathname.length) return { base: pathname.slice(0, at + 1), room: pathname.slice(at + 3) }
  if (at >= 0) return { base: pathname.slice(0, at + 1), room: null }
  return { base: pathname.slice(0, pathname.lastIndexOf('/') + 1), room: null }
}

const resolve = (path, base = document.baseURI) => new URL(path, base)

/** A link to a document page (relative, for href attributes). */
export const documentHref = (room) => `d/${room}`

/** The home page, where the documents are listed. */
export const homeHref = () => './'

/** `?acks=1` asks for the durable acks that drive the saved status; `token` is the link's
 * access token (access.js), if any: a browser cannot give a WebSocket headers. */
const connectionSearch = (token) => (token ? `acks=1&token=${encodeURIComponent(token)}` : 'acks=1')

/** The WebSocket of a room. */
export const socketUrl = (room, base = document.baseURI, token = null) => {
  const url = resolve(`ws/${room}`, base)
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
  url.search = connectionSearch(token)
  return url.href
}

/** The HTTP fallback of a room (the same messages as the WebSocket, over plain requests). */
export const pollUrl = (room, base = document.baseURI, token = null) => {
  const url = resolve(`poll/${room}`, base)
  url.search = connectionSearch(token)
  return url.href
}

/** The absolute address of a document's page, for links given to other people. */
export const documentUrl = (room, base = document.baseURI) => resolve(documentHref(room), base).href

/** An HTTP API path such as "api/docs". */
export const apiUrl = (path, base = document.baseURI) => resolve(path, base).href

/** The service worker, served at the app's root so that its scope covers every page. */
export const workerUrl = (base = document.baseURI) => resolve('sw.js', base).href
export const workerScope = (base = document.baseURI) => resolve('./', base).href
