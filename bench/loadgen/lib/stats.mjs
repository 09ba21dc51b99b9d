// Counters of one measurement window and latency percentiles (pure; no I/O).

/** Nearest-rank percentile of an ascending array (0 when empty). */
export const percentile = (sorted, q) => {
  if (sorted.length === 0) return 0
  const rank = Math.max(0, Math.min(sorted.length - 1, Math.ceil((q / 100) * sorted.length) - 1))
  return sorted[rank]
}

const round = (x, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits

/** p50/p95/p99/max/mean of latencies given in milliseconds. */
export const latencySummary = (values) => {
  const sorted = Float64Array.from(values).sort()
  let sum = 0
  for (const v of sorted) sum += v
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p95: round(percentile(sorted, 95)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.length ? sorted[sorted.length - 1] : 0),
    mean: round(sorted.length ? sum / sorted.length : 0)
  }
}

/** What the clients saw between start and stop: the unit every report is made of. */
export class Window {
  constructor () {
    this.edits = 0 // updates the writers sent
    this.expected = 0 // deliveries owed: for each edit, every other synced client of its room
    this.delivered = 0 // first receipt of an edit by a client other than its writer
    this.echoes = 0 // an edit received back by its own writer (the reference server does this)
    this.late = 0 // a receipt of an edit older than one already seen (duplicate or reordered)
    this.gaps = 0 // edits skipped over by a later one (superseded presence, or lost)
    this.messages = 0 // every message the server sent to any client, of any type
    this.bytes = 0
    this.latencies = []
    this.scheduleLagMax = 0
  }

  summary (sendSeconds) {
    const per = (n) => round(n / Math.max(sendSeconds, 1e-9), 1)
    return {
      edits_sent: this.edits,
      edit_rate: per(this.edits),
      deliveries_expected: this.expected,
      deliveries: this.delivered,
      delivery_rate: per(this.delivered),
      echoes: this.echoes,
      messages_received: this.messages,
      message_rate: per(this.messages),
      bytes_received: this.bytes,
      lost: Math.max(0, this.expected - this.delivered - this.gaps),
      gaps: this.gaps,
      out_of_order: this.late,
      latency_ms: latencySummary(this.latencies),
      schedule_lag_max_ms: round(this.scheduleLagMax)
    }
  }
}

/** A small seeded PRNG (mulberry32), so that runs are repeatable. */
export const random = (seed) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
