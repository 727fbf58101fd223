// The create-job form's checks against the API's own JobRequest schema: what the form accepts the
// API's checker accepts, what it refuses the API refuses too (named on the same field), and a 400
// lands next to the field it names.
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { describe, expect, it } from 'vitest';
import { JobRequestSchema } from '../../../coordinator/api/schemas.ts';
import {
  checkJobForm, choicesOf, fieldOfError, initialValues, messageOfError, type FormValues, type JsonSchema,
} from '../../../coordinator/ui/src/logic/job-form.ts';

/** The schema as the browser gets it: JSON (TypeBox's symbol keys gone). */
const schema = JSON.parse(JSON.stringify(JobRequestSchema)) as JsonSchema;
const apiChecker = TypeCompiler.Compile(JobRequestSchema);
const form = (changes: Partial<FormValues>): FormValues => ({ ...initialValues(), ...changes });

describe('checkJobForm', () => {
  it('sends an empty request for an untouched form: the coordinator\'s defaults apply', () => {
    const { errors, request } = checkJobForm(initialValues(), schema);
    expect(errors).toEqual({});
    expect(request).toEqual({});
  });

  it('turns a filled form into a request the API accepts, numbers as numbers, LoRA only in LoRA mode', () => {
    const values = form({
      name: 'tune', base: 'qwen-tiny', corpus: 'sotu', mode: 'lora', 'lora.rank': '16', 'lora.alpha': '32', baseFormat: 'q4',
      basePath: 'int', lr: '0.002', minLr: '0.0002', warmupSteps: '20', totalBatches: '500', batchSize: '4', expectedNodes: '2',
      'averaging.mode': 'periodic', 'averaging.every': '8', 'averaging.deadlineMs': '10000', 'averaging.codec': 'topk-int8:0.01',
    });
    const { errors, request } = checkJobForm(values, schema);
    expect(errors).toEqual({});
    expect(request).toEqual({
      name: 'tune', base: 'qwen-tiny', corpus: 'sotu', mode: 'lora', lora: { rank: 16, alpha: 32 }, baseFormat: 'q4', basePath: 'int',
      lr: 0.002, minLr: 0.0002, warmupSteps: 20, totalBatches: 500, batchSize: 4, expectedNodes: 2,
      averaging: { mode: 'periodic', every: 8, deadlineMs: 10000, codec: 'topk-int8:0.01' },
    });
    expect(apiChecker.Check(request)).toBe(true);
    expect(checkJobForm({ ...values, mode: 'full' }, schema).request).not.toHaveProperty('lora');
  });

  it('takes LoRA targets as words, checked against the modules the API allows', () => {
    const lora = { mode: 'lora', 'lora.rank': '4', 'lora.alpha': '8' } as const;
    const { errors, request } = checkJobForm(form({ ...lora, 'lora.targets': 'q, v gate' }), schema);
    expect(errors).toEqual({});
    expect(request).toEqual({ mode: 'lora', lora: { rank: 4, alpha: 8, targets: ['q', 'v', 'gate'] } });
    expect(apiChecker.Check(request)).toBe(true);
    expect(checkJobForm(form({ ...lora, 'lora.targets': 'q wq' }), schema).errors['lora.targets']).toBe('wq is not one of q, k, v, o, gate, up, down');
    expect(checkJobForm(form({ ...lora, 'lora.targets': 'q q' }), schema).errors['lora.targets']).toBe('names a module twice');
    for (const targets of [['q', 'wq'], ['q', 'q'], []]) expect(apiChecker.Check({ lora: { rank: 4, alpha: 8, targets } })).toBe(false);
  });

  // Values the form refuses, the message it shows, and the request they would make unchecked.
  const refused: [Partial<FormValues>, string, RegExp, unknown][] = [
    [{ lr: '11' }, 'lr', /^must be <= 10$/, { lr: 11 }],
    [{ lr: 'fast' }, 'lr', /^must be a number$/, { lr: 'fast' }],
    [{ lr: '-0.1' }, 'lr', /^must be >= 0$/, { lr: -0.1 }],
    [{ totalBatches: '2.5' }, 'totalBatches', /^must be a whole number$/, { totalBatches: 2.5 }],
    [{ expectedNodes: '0' }, 'expectedNodes', /^must be >= 1$/, { expectedNodes: 0 }],
    [{ mode: 'lora', 'lora.alpha': '0' }, 'lora.alpha', /^must be > 0$/, { mode: 'lora', lora: { rank: 8, alpha: 0 } }],
    [{ mode: 'lora', 'lora.rank': '' }, 'lora.rank', /^is required/, { mode: 'lora', lora: { alpha: 16 } }],
    [{ 'averaging.mode': 'sync', 'averaging.every': '0', 'averaging.deadlineMs': '5' }, 'averaging.every', /^must be >= 1$/,
      { averaging: { mode: 'sync', every: 0, deadlineMs: 5 } }],
    [{ 'averaging.codec': 'f16' }, 'averaging.mode', /^is required with the other averaging settings$/, { averaging: { codec: 'f16' } }],
    [{ name: 'x'.repeat(129) }, 'name', /^must have at most 128 characters$/, { name: 'x'.repeat(129) }],
  ];
  for (const [changes, field, message, unchecked] of refused) {
    it(`refuses ${JSON.stringify(changes).slice(0, 60)} on ${field}, as the API does`, () => {
      const { errors, request } = checkJobForm(form(changes), schema);
      expect(request).toBeUndefined();
      expect(errors[field as keyof typeof errors]).toMatch(message);
      expect(apiChecker.Check(unchecked)).toBe(false);
    });
  }

  it('refuses a minimum learning rate above the learning rate', () => {
    expect(checkJobForm(form({ lr: '0.001', minLr: '0.01' }), schema).errors.minLr).toMatch(/must be <= lr/);
  });

  it('offers the schema\'s literals in the selects', () => {
    expect(choicesOf(schema, 'mode')).toEqual(['full', 'lora']);
    expect(choicesOf(schema, 'baseFormat')).toEqual(['f32', 'q8', 'q4']);
    expect(choicesOf(schema, 'averaging.mode')).toEqual(['sync', 'periodic']);
  });
});

describe('fieldOfError and messageOfError', () => {
  it('put a 400 next to the field it names, in any of the API\'s spellings', () => {
    expect(fieldOfError({ field: 'body/lr', message: 'body/lr: Expected number to be less or equal to 10' })).toBe('lr');
    expect(fieldOfError({ field: 'body/averaging/every' })).toBe('averaging.every');
    expect(fieldOfError({ field: 'corpus', message: 'unknown corpus "x"' })).toBe('corpus');
    expect(fieldOfError({ message: 'request: /lora/rank: Expected integer' })).toBe('lora.rank');
    expect(fieldOfError({ field: 'body/lora' })).toBe('lora.rank');
    expect(fieldOfError({ field: 'body', message: 'body: Unexpected property' })).toBe('form');
    expect(fieldOfError({ message: 'job-1 is running' })).toBe('form');
  });
  it('drop the API\'s "body/" prefix from the message', () => {
    expect(messageOfError({ message: 'body/lr: Expected number to be less or equal to 10' }))
      .toBe('lr: Expected number to be less or equal to 10');
  });
});
