// Locates the Hugging Face fixtures that live beside the checkout (../shared/fixtures/hf, see
// DESIGN.md "Fixtures"). They are never copied into the repo: a fresh clone lacks them, so
// tests that need them skip there, while CI (CI=true) always has them and fails without them.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
export const HF_FIXTURES_DIR = resolve(repoRoot, '../shared/fixtures/hf');

/**
 * The fixtures folder, or null (with a warning saying why tests are skipped) when it is
 * absent. Throws when absent under CI=true.
 */
export function hfFixturesDir(dir = HF_FIXTURES_DIR, env: NodeJS.ProcessEnv = process.env): string | null {
  if (existsSync(dir)) return dir;
  if (env.CI === 'true') throw new Error(`HF fixtures missing at ${dir}: CI must provide ../shared/fixtures/hf beside the checkout`);
  console.warn(`Skipping tests that need the HF fixtures: ${dir} not found (it lives beside the checkout, see DESIGN.md "Fixtures").`);
  return null;
}
