// The create-job form: base model and corpus (picked from the coordinator's lists or uploaded),
// training mode, schedule and averaging. Checked in the browser first (nothing is sent while a
// field is wrong); the coordinator's 400 lands next to the field it names.
import { html } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import type { JobView } from '../../../api/service.ts';
import { ApiError, getJson, postJson, upload } from '../api.ts';
import { formatBytes } from '../logic/format.ts';
import {
  checkJobForm, choicesOf, fieldOfError, initialValues, messageOfError,
  type FormErrors, type FormValues, type JobField, type JsonSchema,
} from '../logic/job-form.ts';
import { valueOf } from './input.ts';
import { useSession } from './session.ts';

interface Stored { name: string; bytes: number; bundled?: boolean }

/** An empty field is left out of the request: the coordinator's default applies. */
const DEFAULT_CHOICE = { value: '', label: 'default' };

interface FieldProps {
  field: JobField;
  label: string;
  values: FormValues;
  errors: FormErrors;
  set: (field: JobField, value: string) => void;
  hint?: string;
  choices?: { value: string; label: string }[];
  inputMode?: 'numeric' | 'decimal';
}

function fieldId(field: JobField): string {
  return `job-${field.replace('.', '-')}`;
}

/** A labelled input or select with its hint and, when wrong, its message (announced to screen readers). */
function Field({ field, label, values, errors, set, hint, choices, inputMode }: FieldProps) {
  const id = fieldId(field);
  const error = errors[field];
  const onInput = (e: Event) => set(field, valueOf(e));
  const common = { id, name: field, 'aria-invalid': error ? 'true' : undefined, 'aria-describedby': `${id}-note` };
  return html`<div class=${`field${error ? ' invalid' : ''}`}>
    <label for=${id}>${label}</label>
    ${choices
      ? html`<select ...${common} value=${values[field]} onChange=${onInput}>
          ${choices.map((choice) => html`<option value=${choice.value}>${choice.label}</option>`)}</select>`
      : html`<input ...${common} value=${values[field]} onInput=${onInput} inputmode=${inputMode} placeholder="default"
          autocomplete="off" />`}
    <small id=${`${id}-note`} class=${error ? 'error' : 'hint'} data-error-for=${error ? field : undefined}>${error ?? hint ?? ''}</small>
  </div>`;
}

function Upload({ what, onDone }: { what: 'model' | 'corpus'; onDone: (name: string) => void }) {
  const { token } = useSession();
  const [name, setName] = useState('');
  const [files, setFiles] = useState<File[]>([]);
  const [status, setStatus] = useState<string | undefined>();
  const send = async () => {
    if (!name.trim() || files.length === 0) return setStatus('Give a name and choose the file(s) first.');
    setStatus('Uploading…');
    try {
      const stored = await upload<Stored>(what === 'model' ? '/api/models' : '/api/corpora', token, name.trim(), files);
      setStatus(`Stored ${stored.name} (${formatBytes(stored.bytes)})`);
      onDone(stored.name);
    } catch (error) {
      setStatus(error instanceof ApiError ? error.message : String(error));
    }
  };
  const accept = what === 'model' ? '.json,.safetensors' : '.txt,.jsonl';
  return html`<details class="upload"><summary>Upload a ${what}</summary>
    <div class="row">
      <label>${what === 'model' ? 'Model' : 'Corpus'} name <input value=${name} onInput=${(e: Event) => setName(valueOf(e))} /></label>
      <label>${what === 'model' ? 'config.json, tokenizer.json, *.safetensors' : 'A .txt, or .jsonl with a "text" field'}
        <input type="file" accept=${accept} multiple=${what === 'model'}
          onChange=${(e: Event) => setFiles(Array.from((e.target as HTMLInputElement).files ?? []))} /></label>
      <button type="button" onClick=${send}>Upload</button>
    </div>
    ${status && html`<p class="muted" role="status">${status}</p>`}
  </details>`;
}

export function JobForm({ schema }: { schema: JsonSchema }) {
  const { token } = useSession();
  const [values, setValues] = useState(initialValues);
  const [errors, setErrors] = useState<FormErrors>({});
  const [busy, setBusy] = useState(false);
  const [models, setModels] = useState<Stored[]>([]);
  const [corpora, setCorpora] = useState<Stored[]>([]);
  const loadLists = () => {
    getJson<Stored[]>('/api/models', token).then(setModels, () => setModels([]));
    getJson<Stored[]>('/api/corpora', token).then(setCorpora, () => setCorpora([]));
  };
  useEffect(loadLists, [token]);

  const set = (field: JobField, value: string) => {
    setValues((current) => ({ ...current, [field]: value }));
    setErrors(({ [field]: _fixed, ...others }) => others);
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    const checked = checkJobForm(values, schema);
    setErrors(checked.errors);
    if (!checked.request) return focusFirstError(checked.errors);
    setBusy(true);
    try {
      const job = await postJson<JobView>('/api/jobs', token, checked.request);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      const refused = error instanceof ApiError ? error : new ApiError(0, String(error));
      const field = refused.status === 400 ? fieldOfError(refused) : 'form';
      const shown = { [field]: refused.status === 400 ? messageOfError(refused) : refused.message };
      setErrors(shown);
      focusFirstError(shown);
    } finally {
      setBusy(false);
    }
  };

  const props = { values, errors, set };
  const literal = (field: JobField) => [DEFAULT_CHOICE, ...choicesOf(schema, field).map((value) => ({ value, label: value }))];
  if (!token) return html`<p class="empty">Log in to create jobs.</p>`;
  return html`<form class="job-form" onSubmit=${submit} noValidate>
    <p class="muted">A field left empty takes the coordinator's default.</p>
    <fieldset><legend>Job</legend>
      <${Field} field="name" label="Name" hint="shown in lists (default: the job id)" ...${props} />
    </fieldset>
    <fieldset><legend>Model and data</legend>
      <${Field} field="base" label="Base model" ...${props} choices=${[{ value: '', label: 'none: train from scratch' },
        ...models.map((model) => ({ value: model.name, label: `${model.name} (${formatBytes(model.bytes)})` }))]} />
      <${Upload} what="model" onDone=${(name: string) => { loadLists(); set('base', name); }} />
      <${Field} field="corpus" label="Corpus" ...${props} choices=${[{ value: '', label: 'default corpus' },
        ...corpora.map((corpus) => ({
          value: corpus.name, label: `${corpus.name} (${formatBytes(corpus.bytes)}${corpus.bundled ? ', bundled' : ''})`,
        }))]} />
      <${Upload} what="corpus" onDone=${(name: string) => { loadLists(); set('corpus', name); }} />
    </fieldset>
    <fieldset><legend>Training</legend>
      <div class="fields">
        <${Field} field="mode" label="Training mode" ...${props} choices=${literal('mode')} hint="lora: adapters over a frozen base" />
        <${Field} field="baseFormat" label="Base format" ...${props} choices=${literal('baseFormat')} hint="q8/q4: quantized frozen base" />
        <${Field} field="basePath" label="Base path" ...${props} choices=${literal('basePath')} hint="int: int8 kernels on q8/q4" />
        ${values.mode === 'lora' && html`
          <${Field} field="lora.rank" label="LoRA rank" inputMode="numeric" ...${props} />
          <${Field} field="lora.alpha" label="LoRA alpha" inputMode="decimal" ...${props} />
          <${Field} field="lora.targets" label="LoRA targets" hint="e.g. q v gate (default: q k v o gate up down)" ...${props} />`}
      </div>
    </fieldset>
    <fieldset><legend>Schedule</legend>
      <div class="fields">
        <${Field} field="lr" label="Learning rate" inputMode="decimal" ...${props} />
        <${Field} field="minLr" label="Min learning rate" inputMode="decimal" ...${props} />
        <${Field} field="warmupSteps" label="Warmup steps" inputMode="numeric" ...${props} />
        <${Field} field="totalBatches" label="Total micro-batches" inputMode="numeric" ...${props} />
        <${Field} field="batchSize" label="Batch size" inputMode="numeric" hint="sequences per micro-batch" ...${props} />
        <${Field} field="expectedNodes" label="Expected nodes" inputMode="numeric" hint="training starts with this many" ...${props} />
      </div>
    </fieldset>
    <fieldset><legend>Averaging</legend>
      <div class="fields">
        <${Field} field="averaging.mode" label="Averaging mode" ...${props} choices=${literal('averaging.mode')} />
        <${Field} field="averaging.every" label="Every (local steps)" inputMode="numeric" ...${props} />
        <${Field} field="averaging.deadlineMs" label="Deadline (ms)" inputMode="numeric" ...${props} />
        <${Field} field="averaging.codec" label="Codec" hint='f32, f16, int8-block, topk-int8:0.01, powersgd:4' ...${props} />
      </div>
    </fieldset>
    ${errors.form && html`<p class="error" role="alert" data-error-for="form">${errors.form}</p>`}
    <button type="submit" class="primary" disabled=${busy}>${busy ? 'Creating…' : 'Create job'}</button>
  </form>`;
}

function focusFirstError(errors: FormErrors): void {
  const first = Object.keys(errors).find((field) => field !== 'form') as JobField | undefined;
  if (first) requestAnimationFrame(() => document.getElementById(fieldId(first))?.focus());
}
