// Bundles src/main.js (and the CSS it imports) into dist/assets/ with content-hashed names, and
// writes dist/index.html pointing at them. The hashed files can be cached forever; index.html
// must not be cached. dist/sw.js (served at /sw.js) keeps the page usable while offline.

import * as esbuild from 'esbuild'
import { createHash } from 'node:crypto'
import { readFile, writeFile, rm, mkdir } from 'node:fs/promises'
import { dirname, join, basename } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const dist = join(here, 'dist')

await rm(dist, { recursive: true, force: true })
await mkdir(join(dist, 'assets'), { recursive: true })

const result = await esbuild.build({
  entryPoints: { app: join(here, 'src', 'main.js') },
  bundle: true,
  format: 'esm',
  target: ['es2020', 'chrome90', 'firefox90', 'safari15'],
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  outdir: join(dist, 'assets'),
  entryNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  metafile: true,
  logLevel: 'warning'
})

const outputs = Object.keys(result.metafile.outputs).map(p => basename(p))
const js = outputs.find(name => /^app-.*\.js$/.test(name))
const css = outputs.find(name => /^app-.*\.css$/.test(name))
if (!js || !css) throw new Error(`expected app-*.js and app-*.css, got ${outputs.join(', ')}`)

const template = await readFile(join(here, 'index.html'), 'utf8')
const html = template.replace('__JS__', `/assets/${js}`).replace('__CSS__', `/assets/${css}`)
await writeFile(join(dist, 'index.html'), html)

const assets = [`/assets/${js}`, `/assets/${css}`]
const version = createHash('sha256').update(html).digest('hex').slice(0, 12)
const worker = (await readFile(join(here, 'src', 'sw.js'), 'utf8'))
  .replace("'__VERSION__'", JSON.stringify(version))
  .replace('__ASSETS__', JSON.stringify(assets))
await writeFile(join(dist, 'sw.js'), worker)

const sizes = Object.entries(result.metafile.outputs)
  .filter(([p]) => !p.endsWith('.map'))
  .map(([p, o]) => `${basename(p)} ${(o.bytes / 1024).toFixed(1)} KiB`)
console.log(`built web/dist: index.html, sw.js, ${sizes.join(', ')}`)
