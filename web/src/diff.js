// Differences between two texts, line by line (Myers' algorithm after trimming what both share
// at the ends), for showing a version beside the current text and for restoring one as the
// smallest set of edits (unchanged lines keep their identity, and everyone's cursors in them).

/** The lines of `text`, each with its line break (the last may have none): joined, they are it. */
export const linesOf = (text) => (text === '' ? [] : text.match(/[^\n]*\n|[^\n]+$/g))

const MAX_EDIT_DISTANCE = 1000

/**
 * The differences from `before` to `after`: a list of {kind: 'same'|'removed'|'added', lines}
 * in order, where 'removed' lines are only in `before` and 'added' ones only in `after`.
 */
export const diffLines = (before, after) => {
  const a = linesOf(before)
  const b = linesOf(after)
  let start = 0
  while (start < a.length && start < b.length && a[start] === b[start]) start++
  let end = 0
  while (end < a.length - start && end < b.length - start && a[a.length - 1 - end] === b[b.length - 1 - end]) end++
  const middle = myers(a.slice(start, a.length - end), b.slice(start, b.length - end))
  const parts = []
  const push = (kind, lines) => {
    if (lines.length === 0) return
    const last = parts.at(-1)
    if (last && last.kind === kind) last.lines.push(...lines)
    else parts.push({ kind, lines: [...lines] })
  }
  push('same', a.slice(0, start))
  for (const part of middle) push(part.kind, part.lines)
  push('same', a.slice(a.length - end))
  return parts
}

/** Myers' O(ND) diff of two line arrays; past MAX_EDIT_DISTANCE, all of `a` removed and all of
 * `b` added (correct, only less fine-grained). */
const myers = (a, b) => {
  const n = a.length
  const m = b.length
  if (n === 0 || m === 0) return [{ kind: 'removed', lines: a }, { kind: 'added', lines: b }]
  const max = Math.min(n + m, MAX_EDIT_DISTANCE)
  const offset = max + 1
  let v = new Int32Array(2 * max + 3)
  const trace = []
  let found = -1
  for (let d = 0; d <= max && found < 0; d++) {
    trace.push(v.slice())
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? v[offset + k + 1] : v[offset + k - 1] + 1
      let y = x - k
      while (x < n && y < m && a[x] === b[y]) { x++; y++ }
      v[offset + k] = x
      if (x >= n && y >= m) { found = d; break }
    }
  }
  if (found < 0) return [{ kind: 'removed', lines: a }, { kind: 'added', lines: b }]
  // Walk back through the trace: each step is one removal or addition, then a run of equal lines.
  const steps = []
  let x = n
  let y = m
  for (let d = found; d > 0; d--) {
    v = trace[d]
    const k = x - y
    const prevK = k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? k + 1 : k - 1
    const prevX = v[offset + prevK]
    const prevY = prevX - prevK
    while (x > prevX && y > prevY) { steps.push({ kind: 'same', line: a[x - 1] }); x--; y-- }
    if (x === prevX) { steps.push({ kind: 'added', line: b[y - 1] }); y-- } else { steps.push({ kind: 'removed', line: a[x - 1] }); x-- }
  }
  while (x > 0 && y > 0) { steps.push({ kind: 'same', line: a[x - 1] }); x--; y-- }
  steps.reverse()
  const parts = []
  for (const step of steps) {
    const last = parts.at(-1)
    if (last && last.kind === step.kind) last.lines.push(step.line)
    else parts.push({ kind: step.kind, lines: [step.line] })
  }
  return parts
}

/**
 * The edits that turn `current` into `target`, as {index, remove, insert} (UTF-16 indices, as
 * Y.Text counts) from the last to the first, so that each applies to the text the ones before it
 * left. One edit per run of changed lines.
 */
export const editsBetween = (current, target) => {
  const edits = []
  let at = 0
  let pending = null
  const flush = () => {
    if (pending !== null && (pending.remove > 0 || pending.insert !== '')) edits.push(pending)
    pending = null
  }
  for (const part of diffLines(current, target)) {
    const text = part.lines.join('')
    if (part.kind === 'same') {
      flush()
      at += text.length
    } else {
      pending = pending ?? { index: at, remove: 0, insert: '' }
      if (part.kind === 'removed') {
        pending.remove += text.length
        at += text.length
      } else {
        pending.insert += text
      }
    }
  }
  flush()
  return edits.reverse()
}

/** How many lines were added and removed, for a summary. */
export const countChanges = (parts) => ({
  added: parts.filter(p => p.kind === 'added').reduce((n, p) => n + p.lines.length, 0),
  removed: parts.filter(p => p.kind === 'removed').reduce((n, p) => n + p.lines.length, 0)
})
