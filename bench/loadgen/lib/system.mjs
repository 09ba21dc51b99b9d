// What the generator can read about the machine: its own CPU, the server's CPU and memory,
// and how busy each core was (Linux /proc). The server is named by its PID.
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

const round = (x, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits

/** User + system CPU seconds of a process (all its threads). */
export const processCpuSeconds = (pid, clockTicks) => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / clockTicks // utime, stime
}

/** Resident set size of a process in bytes. */
export const processRss = (pid) => {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const match = /VmRSS:\s+(\d+) kB/.exec(status)
  return match ? Number(match[1]) * 1024 : 0
}

/** Busy and total jiffies per core. */
const coreTimes = () => {
  const cores = []
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line)
    if (!m) continue
    const [user, nice, system, idle, iowait, irq, softirq, steal] = m[2].trim().split(/\s+/).map(Number)
    const busy = user + nice + system + irq + softirq + (steal || 0)
    cores[Number(m[1])] = { busy, total: busy + idle + iowait }
  }
  return cores
}

/**
 * Measures one window: the generator's CPU and event-loop use, and when a server PID is known,
 * the server's CPU; plus how busy the server's and the generator's cores were in all (more
 * than the two processes themselves means that something else on the machine got in the way).
 */
export class Meter {
  constructor ({ serverPids = [], clockTicks = 100, serverCore = -1, generatorCore = -1 } = {}) {
    Object.assign(this, { serverPids, clockTicks, serverCore, generatorCore })
  }

  /** The CPU of the server: of all its processes together. */
  serverCpuSeconds () {
    return this.serverPids.reduce((sum, pid) => sum + processCpuSeconds(pid, this.clockTicks), 0)
  }

  start () {
    this.t0 = performance.now()
    this.cpu0 = process.cpuUsage()
    this.elu0 = performance.eventLoopUtilization()
    this.cores0 = coreTimes()
    this.server0 = this.serverCpuSeconds()
    return this
  }

  stop () {
    const wall = Math.max(1e-9, (performance.now() - this.t0) / 1000)
    const cpu = process.cpuUsage(this.cpu0)
    const elu = performance.eventLoopUtilization(this.elu0)
    const cores = coreTimes()
    const coreBusy = (i) => {
      if (i < 0 || !cores[i] || !this.cores0[i]) return null
      const total = cores[i].total - this.cores0[i].total
      return total > 0 ? round((100 * (cores[i].busy - this.cores0[i].busy)) / total) : null
    }
    const out = {
      wall_seconds: round(wall, 3),
      generator_cpu_percent: round((100 * (cpu.user + cpu.system)) / 1e6 / wall),
      generator_loop_busy_percent: round(100 * elu.utilization),
      generator_core_busy_percent: coreBusy(this.generatorCore),
      server_core_busy_percent: coreBusy(this.serverCore)
    }
    if (this.serverPids.length) {
      const seconds = this.serverCpuSeconds() - this.server0
      out.server_cpu_seconds = round(seconds, 3)
      out.server_cpu_percent = round((100 * seconds) / wall)
    }
    return out
  }
}
