#!/usr/bin/env node
// The `swarmtrain-coordinator` executable: runs the TypeScript CLI through tsx's loader.
import { register } from 'tsx/esm/api';

register();
const { runCoordinator } = await import('./cli.ts');
process.exitCode = await runCoordinator(process.argv.slice(2));
