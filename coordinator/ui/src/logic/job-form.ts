// The create-job form without the DOM: its fields, the checks the browser can make before sending
// (against the API's own JobRequest schema, built from proto's JobSpec), the JobRequest the values
// make (an empty field: the coordinator's default), and which field a 400's message belongs to.
import type { JobRequest } from '../../../api/service.ts';

/** The part of a JSON schema (TypeBox's output) the form reads. */
export interface JsonSchema {
  type?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  const?: unknown;
  anyOf?: JsonSchema[];
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
}

/** Every field of the form, named by its path in a JobRequest. */
export const JOB_FIELDS = [
  'name', 'base', 'corpus', 'mode', 'lora.rank', 'lora.alpha', 'lora.targets', 'baseFormat', 'basePath',
  'lr', 'minLr', 'warmupSteps', 'totalBatches', 'batchSize', 'expectedNodes',
  'averaging.mode', 'averaging.every', 'averaging.deadlineMs', 'averaging.codec',
] as const;
export type JobField = (typeof JOB_FIELDS)[number];
export type FormValues = Record<JobField, string>;
/** Messages by field; 'form' holds one that belongs to no field. */
export type FormErrors = Partial<Record<JobField | 'form', string>>;

const TEXT_FIELDS: ReadonlySet<JobField> = new Set([
  'name', 'base', 'corpus', 'mode', 'baseFormat', 'basePath', 'averaging.mode', 'averaging.codec',
]);
/** Fields holding a list, written as words separated by spaces or commas ("q v gate"). */
const LIST_FIELDS: ReadonlySet<JobField> = new Set(['lora.targets']);
/** A LoRA job's first rank and alpha; every other field starts empty (the coordinator's default). */
const LORA_START = { rank: '8', alpha: '16' };

/** The schema of the field at `path` ('averaging.every'), or undefined when JobSpec has none (name, base). */
export function schemaAt(schema: JsonSchema, path: string): JsonSchema | undefined {
  let node: JsonSchema | undefined = schema;
  for (const key of path.split('.')) node = node?.properties?.[key];
  return node;
}

/** The values a union of literals allows ('full', 'lora'). */
function literalsOf(schema: JsonSchema | undefined): string[] {
  return (schema?.anyOf ?? []).map((option) => String(option.const));
}

/** The values a field of literals allows, for its select. */
export function choicesOf(schema: JsonSchema, path: JobField): string[] {
  return literalsOf(schemaAt(schema, path));
}

/** The form's first values: empty (the coordinator's defaults), but for LoRA's rank and alpha. */
export function initialValues(): FormValues {
  const values = Object.fromEntries(JOB_FIELDS.map((field) => [field, ''])) as FormValues;
  values['lora.rank'] = LORA_START.rank;
  values['lora.alpha'] = LORA_START.alpha;
  return values;
}

/** The object a field belongs to ('lora' of 'lora.rank'), undefined for a top-level field. */
function groupOf(field: JobField): string | undefined {
  return field.includes('.') ? field.split('.')[0] : undefined;
}

/** Whether `field` is sent at all with these values: LoRA's only in LoRA mode, a group's when any of its fields is set. */
function isActive(field: JobField, values: FormValues): boolean {
  const group = groupOf(field);
  if (group === 'lora') return values.mode === 'lora';
  return group === undefined || JOB_FIELDS.some((other) => groupOf(other) === group && values[other].trim() !== '');
}

/** Why `raw` does not fit `schema`, in the API's words ("must be <= 10"), or undefined when it does. */
function problemWith(raw: string, schema: JsonSchema | undefined, numeric: boolean): string | undefined {
  if (!schema) return undefined;
  if (!numeric) {
    const literals = literalsOf(schema);
    if (literals.length > 0 && !literals.includes(raw)) return `must be one of ${literals.join(', ')}`;
    if (schema.minLength !== undefined && raw.length < schema.minLength) return `must have at least ${schema.minLength} characters`;
    if (schema.maxLength !== undefined && raw.length > schema.maxLength) return `must have at most ${schema.maxLength} characters`;
    return undefined;
  }
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value)) return 'must be a number';
  if (schema.type === 'integer' && !Number.isInteger(value)) return 'must be a whole number';
  if (schema.minimum !== undefined && value < schema.minimum) return `must be >= ${schema.minimum}`;
  if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) return `must be > ${schema.exclusiveMinimum}`;
  if (schema.maximum !== undefined && value > schema.maximum) return `must be <= ${schema.maximum}`;
  if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) return `must be < ${schema.exclusiveMaximum}`;
  return undefined;
}

/** Why the words of a list field do not fit its schema (each a literal it allows, none twice), or undefined. */
function listProblem(words: string[], schema: JsonSchema | undefined): string | undefined {
  const allowed = literalsOf(schema?.items);
  const unknown = words.find((word) => allowed.length > 0 && !allowed.includes(word));
  if (unknown !== undefined) return `${unknown} is not one of ${allowed.join(', ')}`;
  if (new Set(words).size !== words.length) return 'names a module twice';
  return undefined;
}

/**
 * Checks the values against the job schema and each other; without errors, returns the request
 * to send: empty optional fields are left out (the coordinator's defaults apply), numbers are numbers.
 */
export function checkJobForm(values: FormValues, schema: JsonSchema): { errors: FormErrors; request?: JobRequest } {
  const errors: FormErrors = {};
  const request: Record<string, unknown> = {};
  for (const field of JOB_FIELDS) {
    if (!isActive(field, values)) continue;
    const raw = values[field].trim();
    if (raw === '') {
      // Empty is the coordinator's default, but a group (averaging, lora) sent at all needs its required fields.
      const group = groupOf(field);
      if (group !== undefined && schemaAt(schema, group)?.required?.includes(field.split('.')[1])) {
        errors[field] = `is required with the other ${group} settings`;
      }
      continue;
    }
    const list = LIST_FIELDS.has(field);
    const numeric = !TEXT_FIELDS.has(field) && !list;
    const problem = list ? listProblem(raw.split(/[\s,]+/).filter(Boolean), schemaAt(schema, field)) : problemWith(raw, schemaAt(schema, field), numeric);
    if (problem) {
      errors[field] = problem;
      continue;
    }
    const [head, key] = field.split('.');
    const value = list ? raw.split(/[\s,]+/).filter(Boolean) : numeric ? Number(raw) : raw;
    if (key === undefined) request[head] = value;
    else request[head] = { ...(request[head] as object | undefined), [key]: value };
  }
  if (!errors.lr && !errors.minLr && values.lr.trim() !== '' && values.minLr.trim() !== '' && Number(values.minLr) > Number(values.lr)) {
    errors.minLr = 'must be <= lr (the schedule decays from lr down to minLr)';
  }
  return Object.keys(errors).length > 0 ? { errors } : { errors, request: request as JobRequest };
}

/** The form field a 400 names ('body/lr', '/averaging/every', 'lora.rank'), 'form' when it names none of them. */
export function fieldOfError(error: { message?: string; field?: string }): JobField | 'form' {
  // Without `field`, a message may still name one: "body/lr: ..." or the service's "request: /averaging/every: ...".
  const named = error.field ?? /(?:^body|\s)(\/[\w/]+):/.exec(error.message ?? '')?.[1] ?? '';
  const path = named.replace(/^\/?body/, '').replace(/^[/.]/, '').replaceAll('/', '.');
  if ((JOB_FIELDS as readonly string[]).includes(path)) return path as JobField;
  // A whole object named (a missing property of lora or averaging): its first field in the form.
  const first = JOB_FIELDS.find((field) => path !== '' && field.startsWith(`${path}.`));
  return first ?? 'form';
}

/** A 400's message as the form shows it: without the API's "body/" location prefix. */
export function messageOfError(error: { message?: string }): string {
  return (error.message ?? 'the coordinator refused the job').replace(/^body\//, '');
}
