// The exit-code rule shared by every swarmtrain command: 0 ok, 1 failure, 2 usage (bad input),
// and UsageError, the one error type that means "bad input: fix the command line or its files".

/** What a command returns: 0 when it did its job, 1 when it failed, 2 when its input was bad. */
export const EXIT = { ok: 0, failure: 1, usage: 2 } as const;

/** Bad input (options, files, a refused join): reported as one line, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The exit code of a command that threw `err`: 2 for bad input, 1 for any other failure. */
export function exitCodeOf(err: unknown): number {
  return err instanceof UsageError ? EXIT.usage : EXIT.failure;
}

export const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/**
 * Runs `load`, a step that only reads the user's input (files, checkpoints, a join address); the
 * errors `isBadInput` accepts (default: all) become UsageErrors, the others stay failures.
 */
export async function asInput<T>(load: () => Promise<T>, isBadInput: (err: unknown) => boolean = () => true): Promise<T> {
  try {
    return await load();
  } catch (err) {
    throw err instanceof UsageError || !isBadInput(err) ? err : new UsageError(messageOf(err));
  }
}
