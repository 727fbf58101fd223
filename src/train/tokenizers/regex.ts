// Oniguruma split patterns (what Hugging Face tokenizer.json files hold) translated to JavaScript
// regular expressions in `u` mode, keeping Oniguruma's meaning of shorthands, `.`, (?i:), atomic and possessive forms.

/** Oniguruma's \s is Unicode White_Space (JavaScript's \s adds U+FEFF and lacks U+0085). */
const SPACE = '\\p{White_Space}';
const NOT_SPACE = '\\P{White_Space}';
/** Oniguruma's Unicode \d and \w. */
const DIGIT = '\\p{Nd}';
const WORD = '\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}';
/** Escapes JavaScript lacks or reads differently: refused rather than silently changed. */
const REFUSED_ESCAPES = new Set(['A', 'z', 'Z', 'G', 'h', 'H', 'R', 'X', 'K', 'N', 'O', 'W', 'D', 'y', 'Y']);

/** Translates an Oniguruma pattern; throws naming the construct it cannot keep exactly. */
export function translatePattern(source: string): RegExp {
  let out = '';
  let inClass = false;
  let classStart = -1;
  let lastAtom = -1; // where the last complete atom starts in `out`, for quantifiers that follow it
  const groups: { kind: 'plain' | 'caseless' | 'atomic'; start: number; caseless: boolean; name?: string }[] = [];
  let caseless = false;
  let fresh = 0;
  const fail = (why: string): never => { throw new Error(`split pattern ${JSON.stringify(source)}: ${why}`); };
  const letterCases = (c: string): string => {
    const lower = c.toLowerCase();
    const upper = c.toUpperCase();
    return caseless && /^[a-z]$/i.test(c) && lower !== upper ? lower + upper : c;
  };
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    const atomStart = out.length;
    if (c === '\\') {
      const e = source[++i];
      if (e === undefined) fail('ends with a lone backslash');
      if (REFUSED_ESCAPES.has(e)) fail(`\\${e} has no exact JavaScript equivalent`);
      if (e === 's') out += SPACE;
      else if (e === 'S') out += NOT_SPACE;
      else if (e === 'd') out += DIGIT;
      else if (e === 'w') out += inClass ? WORD : `[${WORD}]`;
      else if (e === 'p' || e === 'P') {
        const close = source.indexOf('}', i);
        if (source[i + 1] !== '{' || close < 0) fail(`\\${e} needs {Property}`);
        out += source.slice(i - 1, close + 1);
        i = close;
      } else if (e === 'x' && source[i + 1] === '{') {
        const close = source.indexOf('}', i);
        out += `\\u{${source.slice(i + 2, close)}}`;
        i = close;
      } else if (/[a-zA-Z]/.test(e) && !'tnrfvbBux0'.includes(e)) fail(`\\${e} is not a known escape`);
      else out += `\\${e}`;
    } else if (inClass) {
      if (c === ']') inClass = false;
      else if (c === '[') fail('nested character classes are not supported');
      else if (c === '&' && source[i + 1] === '&') fail('class intersection (&&) is not supported');
      out += c === ']' ? c : letterCases(c);
      if (c === ']') lastAtom = classStart; // the class is one atom, starting where it opened
      continue;
    } else if (c === '[') {
      inClass = true;
      classStart = out.length;
      out += '[';
      if (source[i + 1] === '^') { out += '^'; i++; }
      if (source[i + 1] === ']') { out += '\\]'; i++; } // a leading ] is literal in Oniguruma
      continue;
    } else if (c === '(') {
      if (source[i + 1] !== '?') { groups.push({ kind: 'plain', start: out.length, caseless }); out += '('; continue; }
      const rest = source.slice(i + 2);
      if (rest.startsWith('i:')) {
        groups.push({ kind: 'caseless', start: out.length, caseless });
        caseless = true;
        out += '(?:';
        i += 3;
      } else if (rest.startsWith('>')) {
        const name = `atomic${fresh++}`;
        groups.push({ kind: 'atomic', start: out.length, caseless, name });
        // Wrapped in (?:...) so a quantifier after the group repeats the whole atomic match.
        out += `(?:(?=(?<${name}>`;
        i += 2;
      } else if (/^(:|=|!|<=|<!)/.test(rest)) {
        const opener = rest.match(/^(:|=|!|<=|<!)/)![0];
        groups.push({ kind: 'plain', start: out.length, caseless });
        out += `(?${opener}`;
        i += 1 + opener.length;
      } else fail(`group (?${rest.slice(0, 3)}... is not supported`);
      continue;
    } else if (c === ')') {
      const group = groups.pop() ?? fail('unbalanced )');
      caseless = group.caseless;
      out += group.kind === 'atomic' ? `))\\k<${group.name}>)` : ')';
      lastAtom = group.start;
      continue;
    } else if (c === '.') out += '[^\\n]';
    else if ('?*+{'.includes(c)) {
      let quantifier = c;
      if (c === '{') {
        const close = source.indexOf('}', i);
        if (close < 0) fail('unclosed {');
        quantifier = source.slice(i, close + 1);
        i = close;
      }
      if (lastAtom < 0) fail(`quantifier ${quantifier} follows nothing`);
      if (source[i + 1] === '?') { quantifier += '?'; i++; }
      else if (source[i + 1] === '+') {
        // Possessive: match greedily, never give back, as an atomic group (a lookahead and a backreference).
        const name = `possessive${fresh++}`;
        out = `${out.slice(0, lastAtom)}(?=(?<${name}>${out.slice(lastAtom)}${quantifier}))\\k<${name}>`;
        i++;
        lastAtom = -1;
        continue;
      }
      out += quantifier;
      lastAtom = -1;
      continue;
    } else out += letterCases(c).length > 1 ? `[${letterCases(c)}]` : c;
    lastAtom = atomStart;
  }
  if (inClass) fail('unclosed [');
  if (groups.length > 0) fail('unclosed (');
  return new RegExp(out, 'gu');
}
