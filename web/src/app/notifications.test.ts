import { describe, expect, it } from 'vitest';

import type { IncomingMessage } from '../lib/sync/engine.ts';
import { shouldNotify } from './notifications.ts';

function incoming(muted: boolean, mentionsMe: boolean): IncomingMessage {
  return {
    message: { id: 'm', conversation_id: 'c', seq: 1, sender_id: 'u-ann', client_msg_id: 'x', body: 'hi', created_at: '2026-11-28T12:00:00Z' },
    chat: { id: 'c', kind: 'group', title: 'Team', members: [], peerId: null, lastMessage: null, lastSeq: 1, unread: 1, unreadMentions: 0, readSeq: 0, muted, isAdmin: false },
    sender: 'ann',
    mentionsMe,
  };
}

describe('notifications', () => {
  it('a muted chat notifies of mentions only', () => {
    expect(shouldNotify(incoming(false, false))).toBe(true);
    expect(shouldNotify(incoming(true, false))).toBe(false);
    expect(shouldNotify(incoming(true, true))).toBe(true);
  });
});
