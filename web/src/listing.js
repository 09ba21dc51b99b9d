// The server's documents as the document API lists them (GET api/docs): one page at a time, in
// name order, searched by title or name on the server. Pure: the home page does the fetching.

export const PAGE_SIZE = 50

/** The API path of one page: after the name `after` (null for the first), matching `query`. */
export const listingPath = ({ after = null, query = '', limit = PAGE_SIZE } = {}) => {
  const params = new URLSearchParams({ limit: String(limit) })
  const q = query.trim()
  if (q) params.set('q', q)
  if (after !== null) params.set('after', after)
  return `api/docs?${params}`
}

/** The page in a listing answer, {documents: [{room, title, size, changed}], next}; entries
 * that are not well formed are left out, and an answer that is not a listing is empty. */
export const parseListing = (answer) => {
  const documents = Array.isArray(answer?.documents) ? answer.documents : []
  return {
    documents: documents
      .filter(d => d !== null && typeof d === 'object' && typeof d.name === 'string' && d.name !== '')
      .map(d => ({
        room: d.name,
        title: typeof d.title === 'string' ? d.title : '',
        size: Number.isFinite(d.size) ? d.size : 0,
        changed: typeof d.last_change === 'string' && !Number.isNaN(Date.parse(d.last_change)) ? Date.parse(d.last_change) : null
      })),
    next: typeof answer?.next === 'string' ? answer.next : null
  }
}

/** What the home page shows for a listing refused with `status`: null to hide the section. */
export const listingProblem = (status) => {
  if (status === 401 || status === 403) return null // the server does not list its documents to this browser
  return 'The server could not list its documents just now.'
}

/** "12 bytes", "3.4 KB", "1.2 MB" (what is stored: it shrinks when the server compacts). */
export const formatSize = (bytes) => {
  if (bytes < 1000) return `${bytes} bytes`
  if (bytes < 1000 * 1000) return `${(bytes / 1000).toFixed(1)} KB`
  return `${(bytes / 1000 / 1000).toFixed(1)} MB`
}
