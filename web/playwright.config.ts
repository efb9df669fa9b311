import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { defineConfig } from '@playwright/test';

// End-to-end tests drive Debian's Chromium against the real `parlor serve` binary on a free
// port with a fresh data directory. This file is evaluated by the runner and again by each
// worker: the first evaluation picks the port and directory, the environment carries them.

const here = path.dirname(fileURLToPath(import.meta.url));

function freePort(): number {
  const script =
    "const s=require('node:net').createServer();" +
    "s.listen(0,'127.0.0.1',()=>{process.stdout.write(String(s.address().port));s.close();});";
  return Number(execFileSync(process.execPath, ['-e', script]).toString());
}

process.env.PARLOR_E2E_PORT ??= String(freePort());
process.env.PARLOR_E2E_DATA_DIR ??= mkdtempSync(path.join(tmpdir(), 'parlor-e2e-'));

const port = Number(process.env.PARLOR_E2E_PORT);
// The server started here refuses uploads over 8 MiB (the default is 25 MiB), so that
// `e2e/files.spec.ts` sees the server's own refusal of a file the client lets through.
if (!process.env.PARLOR_E2E_URL) process.env.PARLOR_E2E_SERVER_FILE_BYTES_MAX ??= String(8 * 1024 * 1024);
const dataDir = process.env.PARLOR_E2E_DATA_DIR;
const bin = process.env.PARLOR_BIN ?? path.resolve(here, '../target/debug/parlor');
// PARLOR_E2E_URL points the tests at a Parlor that runs already (a local cluster behind
// HAProxy, say) instead of starting one.
const external = process.env.PARLOR_E2E_URL;
const baseURL = external ?? `http://127.0.0.1:${port}`;

export default defineConfig({
  testDir: 'e2e',
  outputDir: 'test-results',
  timeout: 60_000,
  expect: { timeout: 10_000 },
  workers: 1,
  fullyParallel: false,
  forbidOnly: Boolean(process.env.CI),
  retries: 0,
  reporter: 'list',
  globalTeardown: './e2e/global-teardown.ts',
  use: {
    baseURL,
    browserName: 'chromium',
    trace: 'retain-on-failure',
    screenshot: 'only-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    },
  },
  webServer: external ? undefined : {
    // Every test user registers from 127.0.0.1: lift the per-IP authentication limit, which
    // is there to slow password guessing, not test suites.
    command:
      `"${bin}" serve --listen 127.0.0.1:${port} --data-dir "${dataDir}"` +
      ' --auth-per-second-per-ip 1000 --auth-burst-per-ip 1000',
    url: `${baseURL}/healthz`,
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter((entry): entry is [string, string] => entry[1] !== undefined)),
      PARLOR_FILE_BYTES_MAX: process.env.PARLOR_E2E_SERVER_FILE_BYTES_MAX ?? '',
    },
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: 'ignore',
    stderr: 'pipe',
  },
});
