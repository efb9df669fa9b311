import { rmSync } from 'node:fs';

/** Removes the server's temporary data directory (made by playwright.config.ts). */
export default function globalTeardown(): void {
  const dir = process.env.PARLOR_E2E_DATA_DIR;
  if (dir && dir.includes('parlor-e2e-')) rmSync(dir, { recursive: true, force: true });
}
