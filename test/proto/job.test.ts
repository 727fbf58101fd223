import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { JobError, validateJob } from '../../proto/index.ts';

const demoJob = JSON.parse(readFileSync(new URL('../../coordinator/jobs/demo.json', import.meta.url), 'utf8'));

describe('validateJob', () => {
  it('returns a job that matches the schema as it is', () => {
    expect(validateJob(demoJob)).toBe(demoJob);
  });

  it('refuses a job that does not, naming where it came from and the first offending field', () => {
    const bad = (job: unknown, where?: string) => {
      try {
        validateJob(job, where);
      } catch (err) {
        expect(err).toBeInstanceOf(JobError);
        return (err as Error).message;
      }
      throw new Error('validateJob accepted a bad job');
    };
    expect(bad({ ...demoJob, totalBatches: -1 })).toBe('job: /totalBatches: Expected integer to be greater or equal to 0');
    expect(bad({ ...demoJob, averaging: { ...demoJob.averaging, every: 0 } }, 'job a.json'))
      .toBe('job a.json: /averaging/every: Expected integer to be greater or equal to 1');
    expect(bad({ ...demoJob, mode: 'half' })).toMatch(/^job: \/mode: /);
    expect(bad({ ...demoJob, jobId: 'has space' })).toMatch(/^job: \/jobId: /);
    expect(bad([])).toMatch(/^job: \/: /);
  });

  it('takes small groups with a value-faithful codec, refuses them with a sparse one (parameters would travel as zeros)', () => {
    const groups = (codec: string) => ({ ...demoJob, averaging: { ...demoJob.averaging, topology: 'groups', groupSize: 3, codec } });
    expect(validateJob(groups('int8-block:32')).averaging.groupSize).toBe(3);
    expect(() => validateJob(groups('topk-int8:0.05'))).toThrow(/topology "groups" averages parameters, which codec "topk-int8:0.05"/);
    expect(() => validateJob({ ...groups('f32'), averaging: { ...groups('f32').averaging, groupSize: 1 } })).toThrow(/groupSize/);
  });
});
