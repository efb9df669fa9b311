import { describe, expect, it } from 'vitest';

import type { ChatView } from '../../lib/sync/engine.ts';
import { chatScore, filterChats, fold, newPeople, rankChats } from './chatMatch.ts';

const ME = 'u-me';

function chat(id: string, title: string, others: string[], kind: 'direct' | 'group' = others.length === 1 ? 'direct' : 'group'): ChatView {
  const members = [ME, ...others].map((name) => ({
    id: name === ME ? ME : `u-${name}`,
    username: name === ME ? 'me' : name,
    online: false,
    role: 'member' as const,
    last_delivered_seq: 0,
    last_read_seq: 0,
  }));
  return {
    id,
    kind,
    title,
    members,
    peerId: kind === 'direct' ? `u-${others[0]}` : null,
    lastMessage: null,
    lastSeq: 0,
    unread: 0,
    unreadMentions: 0,
    readSeq: 0,
    muted: false,
    isAdmin: false,
  };
}

// Most recent first, as the chat list holds them.
const chats = [
  chat('c1', 'Weekend hike', ['zoë', 'bob']),
  chat('c2', 'bob', ['bob']),
  chat('c3', 'Design review', ['carol', 'dave']),
  chat('c4', 'Bobsleigh team', ['erin', 'frank']),
  chat('c5', 'carol', ['carol']),
];

const ids = (list: ChatView[]) => list.map((c) => c.id);

describe('chat matching', () => {
  it('folds case and accents', () => {
    expect(fold('Zoë ÅNGSTRÖM')).toBe('zoe angstrom');
  });

  it('filters by title and by the other members’ names, keeping the list order', () => {
    expect(ids(filterChats(chats, 'bob', ME))).toEqual(['c1', 'c2', 'c4']);
    expect(ids(filterChats(chats, 'ZOE', ME))).toEqual(['c1']);
    expect(ids(filterChats(chats, 'review car', ME))).toEqual(['c3']);
    expect(ids(filterChats(chats, 'nobody', ME))).toEqual([]);
    expect(ids(filterChats(chats, '  ', ME))).toEqual(ids(chats));
  });

  it('never matches every chat by my own name', () => {
    expect(filterChats(chats, 'me', ME)).toEqual([]);
  });

  it('ranks a title that starts with the query first, then a word of a title, then a member, then anything containing it', () => {
    expect(ids(rankChats(chats, 'bob', ME))).toEqual(['c2', 'c4', 'c1']);
    expect(chatScore(chats[2]!, 'rev', ME)).toBe(3);
    expect(chatScore(chats[2]!, 'dav', ME)).toBe(2);
    expect(chatScore(chats[2]!, 'xyz', ME)).toBe(0);
    expect(chatScore(chats[2]!, 'sign', ME)).toBe(1);
  });

  it('keeps equally good matches most recent first', () => {
    expect(ids(rankChats(chats, 'carol', ME))).toEqual(['c5', 'c3']);
    expect(ids(rankChats(chats, '', ME))).toEqual(ids(chats));
  });

  it('offers as new people only those without a direct chat, never me', () => {
    const people = [
      { id: 'u-bob', username: 'bob', online: true },
      { id: 'u-dave', username: 'dave', online: false },
      { id: ME, username: 'me', online: true },
    ];
    expect(newPeople(people, chats, ME).map((p) => p.username)).toEqual(['dave']);
  });
});
