// Finding a chat by what a person remembers of it: its title or the names of the people in
// it. Used by the chat list's filter (which keeps the list's order) and by the quick
// switcher (which ranks). Pure: chats in, chats out.

import type { Member, UserId } from '../../lib/api/types.ts';
import type { ChatView } from '../../lib/sync/engine.ts';

/** Lower case without accents, so "Zoë" is found by "zoe". */
export function fold(text: string): string {
  return text.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase();
}

function words(query: string): string[] {
  return fold(query).split(/\s+/).filter((w) => w !== '');
}

/** What a chat is found by: its title, then the other members' names. */
function haystacks(chat: ChatView, meId: UserId): string[] {
  return [fold(chat.title), ...chat.members.filter((m) => m.id !== meId).map((m) => fold(m.username))];
}

/**
 * How well `chat` matches `query`, higher is better; 0 for no match. Every word must occur
 * in the title or a member's name; a title that starts with the query beats a word of it
 * that does, which beats a member whose name does, which beats anything that merely contains it.
 */
export function chatScore(chat: ChatView, query: string, meId: UserId): number {
  const wanted = words(query);
  if (wanted.length === 0) return 1;
  const [title, ...names] = haystacks(chat, meId);
  const all = [title!, ...names];
  if (!wanted.every((w) => all.some((h) => h.includes(w)))) return 0;
  const whole = wanted.join(' ');
  if (title!.startsWith(whole)) return 4;
  const startsAWord = (h: string, w: string) => h.split(/[\s_.-]+/).some((part) => part.startsWith(w));
  if (wanted.every((w) => startsAWord(title!, w))) return 3;
  if (wanted.every((w) => all.some((h) => startsAWord(h, w)))) return 2;
  return 1;
}

/** The chats that match, in the order given (the chat list's: most recent first). */
export function filterChats(chats: readonly ChatView[], query: string, meId: UserId): ChatView[] {
  if (words(query).length === 0) return [...chats];
  return chats.filter((chat) => chatScore(chat, query, meId) > 0);
}

/** The chats that match, best first; equally good ones keep the given (most recent first) order. */
export function rankChats(chats: readonly ChatView[], query: string, meId: UserId): ChatView[] {
  return chats
    .map((chat, index) => ({ chat, index, score: chatScore(chat, query, meId) }))
    .filter((c) => c.score > 0)
    .sort((a, b) => b.score - a.score || a.index - b.index)
    .map((c) => c.chat);
}

/** People found by name who are not me and with whom I have no direct chat yet (those show as the chat). */
export function newPeople(people: readonly Member[], chats: readonly ChatView[], meId: UserId): Member[] {
  const peers = new Set(chats.filter((c) => c.kind === 'direct' && c.peerId !== null).map((c) => c.peerId));
  return people.filter((p) => p.id !== meId && !peers.has(p.id));
}
