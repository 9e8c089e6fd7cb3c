// Load client of bench/bench_http.py: keep-alive HTTP/1.1 requests against one server on 127.0.0.1, the pattern of
// bench/engine_client.mjs (node:http, one keep-alive Agent, at most `conc` requests in flight, so `conc` keep-alive
// connections; no dependencies).
//
//   node bench/http_client.mjs CONFIG.json   -> one JSON object on stdout
//
// CONFIG: {port, pid, clkTck, warmup, phases: [{name, method, path, body, conc, count}]}
//   pid: the server process, whose CPU time (/proc/<pid>/stat, all threads) is read around each phase
//   body: a string sent as application/json (POST), or null
// Every phase is bounded by its count; every request times out after 30 s.
import http from 'node:http'
import fs from 'node:fs'

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))

function request (agent, method, path, body) {
  return new Promise((resolve, reject) => {
    const headers = body ? { 'content-type': 'application/json', 'content-length': body.length } : {}
    const req = http.request({ host: '127.0.0.1', port: config.port, method, path, agent, headers, timeout: 30_000 },
      res => {
        const chunks = []
        res.on('data', c => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }))
      })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    if (body) req.write(body)
    req.end()
  })
}

function serverCpuMs () {
  try {
    const stat = fs.readFileSync(`/proc/${config.pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) * 1000 / config.clkTck
  } catch { return NaN }
}

function pct (sorted, p) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
}

async function phase (spec) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: spec.conc })
  const body = spec.body == null ? null : Buffer.from(spec.body)
  const expected = spec.expect ?? null
  const run = async (count, lat) => {
    let next = 0
    let errors = 0
    let firstError
    async function worker () {
      while (true) {
        const i = next++
        if (i >= count) return
        const s = process.hrtime.bigint()
        try {
          const res = await request(agent, spec.method, spec.path, body)
          if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${res.text.slice(0, 200)}`)
          if (expected !== null && res.text !== expected) throw new Error(`unexpected answer ${res.text.slice(0, 200)}`)
        } catch (e) { errors++; firstError ??= String(e.message ?? e) }
        if (lat) lat[i] = Number(process.hrtime.bigint() - s) / 1e6
      }
    }
    await Promise.all(Array.from({ length: Math.min(spec.conc, count) }, worker))
    return { errors, firstError }
  }
  await run(Math.min(config.warmup, spec.count), null) // opens the connections, warms the server's code paths
  const lat = new Array(spec.count)
  const server0 = serverCpuMs()
  const cpu0 = process.cpuUsage()
  const t0 = process.hrtime.bigint()
  const { errors, firstError } = await run(spec.count, lat)
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6
  const cpu = process.cpuUsage(cpu0)
  const serverMs = serverCpuMs() - server0
  agent.destroy()
  const sorted = lat.slice().sort((a, b) => a - b)
  const r3 = x => +x.toFixed(3)
  return {
    count: spec.count,
    concurrency: spec.conc,
    errors,
    firstError,
    wallMs: +wallMs.toFixed(1),
    perSec: +(spec.count / (wallMs / 1000)).toFixed(1),
    p50ms: r3(pct(sorted, 50)),
    p99ms: r3(pct(sorted, 99)),
    maxms: r3(sorted[sorted.length - 1]),
    serverCpuMsPerOp: r3(serverMs / spec.count),
    serverCores: r3(serverMs / wallMs),
    clientCpuMsPerOp: r3((cpu.user + cpu.system) / 1000 / spec.count)
  }
}

const result = {}
for (const spec of config.phases) {
  result[spec.name] = await phase(spec)
  console.error(spec.name, JSON.stringify(result[spec.name]))
}
console.log(JSON.stringify(result))
