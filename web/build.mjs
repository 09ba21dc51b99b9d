// Bundles src/main.js (and the CSS it imports) into dist/assets/ with content-hashed names, and
// writes dist/index.html pointing at them. The hashed files can be cached forever; index.html
// must not be cached. dist/sw.js (served at the app's root) keeps the page usable while offline.
//
// index.html names its assets relative to the app's root, which its first (inline) script sets
// as the document's base URL from the page's own path (urls.js: pageOf), so the app works under
// any prefix. The page's Content-Security-Policy allows that one script by its hash and no other
// inline script: no script that a document's Markdown smuggles past the sanitizer can run.

import * as esbuild from 'esbuild'
import { createHash } from 'node:crypto'
import { readFile, writeFile, rm, mkdir } from 'node:fs/promises'
import { dirname, join, basename } from 'node:path'
import { fileURLToPath } from 'node:url'
import { pageOf } from './src/urls.js'

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

const boot = '(function(){var p=(' + pageOf.toString() + ')(location.pathname);' +
  "var b=document.createElement('base');b.href=p.base;document.head.appendChild(b);" +
  "document.documentElement.dataset.view=p.room===null?'home':'document'})()"
const bootHash = createHash('sha256').update(boot).digest('base64')
const csp = [
  "default-src 'self'",
  `script-src 'self' 'sha256-${bootHash}'`,
  // CodeMirror writes its styles at run time; a document's own styles are removed by the sanitizer.
  "style-src 'self' 'unsafe-inline'",
  // Markdown may show images from anywhere, as people expect.
  'img-src * data: blob:',
  "connect-src 'self' ws: wss:",
  "font-src 'self' data:",
  "object-src 'none'",
  "frame-src 'none'",
  "base-uri 'self'",
  "form-action 'none'",
  "worker-src 'self'"
].join('; ')

const template = await readFile(join(here, 'index.html'), 'utf8')
const html = template
  .replace('__CSP__', csp)
  .replace('__BOOT__', boot)
  .replace('__JS__', `assets/${js}`)
  .replace('__CSS__', `assets/${css}`)
await writeFile(join(dist, 'index.html'), html)

const assets = [`assets/${js}`, `assets/${css}`]
const version = createHash('sha256').update(html).digest('hex').slice(0, 12)
const worker = (await readFile(join(here, 'src', 'sw.js'), 'utf8'))
  .replace("'__VERSION__'", JSON.stringify(version))
  .replace('__ASSETS__', JSON.stringify(assets))
await writeFile(join(dist, 'sw.js'), worker)

const sizes = Object.entries(result.metafile.outputs)
  .filter(([p]) => !p.endsWith('.map'))
  .map(([p, o]) => `${basename(p)} ${(o.bytes / 1024).toFixed(1)} KiB`)
console.log(`built web/dist: index.html, sw.js, ${sizes.join(', ')}`)
