import { describe, expect, it } from 'vitest';
import { groupId, parseGroupId } from '../../proto/index.ts';

describe('parameter-group ids', () => {
  it('builds the wire strings', () => {
    expect(groupId({ kind: 'trunk' })).toBe('trunk');
    expect(groupId({ kind: 'expert', layer: 0, expert: 3 })).toBe('expert.0.3');
    expect(groupId({ kind: 'expert', layer: 12, expert: 1048576 })).toBe('expert.12.1048576');
  });

  it('parses what it builds back to the same group', () => {
    expect(parseGroupId('trunk')).toEqual({ kind: 'trunk' });
    expect(parseGroupId('expert.0.3')).toEqual({ kind: 'expert', layer: 0, expert: 3 });
    for (const [layer, expert] of [[0, 0], [1, 10], [999, 7], [2 ** 20, 2 ** 20]]) {
      expect(parseGroupId(groupId({ kind: 'expert', layer, expert }))).toEqual({ kind: 'expert', layer, expert });
    }
  });

  it.each([
    '', 'Trunk', 'trunk.0', 'expert', 'expert.1', 'expert.1.2.3', 'expert..2', 'expert.1.', 'expert.-1.2', 'expert.01.2', 'expert.1.02',
    'expert.1e3.2', 'expert.1.2 ', ' expert.1.2', 'expert.0x1.2', 'expert.1.1048577', 'expert.99999999.0', 'experts.1.2', 'expert:1:2',
  ])('refuses the malformed id %j', (id) => {
    expect(parseGroupId(id)).toBeUndefined();
  });

  it('refuses to build an id of an index outside the wire bounds', () => {
    expect(() => groupId({ kind: 'expert', layer: -1, expert: 0 })).toThrow(RangeError);
    expect(() => groupId({ kind: 'expert', layer: 0, expert: 1.5 })).toThrow(RangeError);
    expect(() => groupId({ kind: 'expert', layer: 2 ** 20 + 1, expert: 0 })).toThrow(RangeError);
  });
});
