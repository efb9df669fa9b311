// What one event does to a message, to a chat list row's members, and to replies that
// quote a message: pure functions, shared by the timelines, the chat list and the view of
// changes still pending here (shown as if done, until the server's event replaces them).
//
// Each one returns a new object when something changed and the same one otherwise, so
// React can skip what did not change. Applying an event twice ends where applying it once
// does (reactions are sets, an edit sets the body): a catch-up may replay events that a
// message fetched in its current state already reflects.

import type { Conversation, ConversationEvent, ConversationMember, Message, UserId } from '../api/types.ts';

/** The characters of a body a reply shows (the server's `EXCERPT_CHARS_MAX`). */
export const EXCERPT_CHARS_MAX = 120;

export function excerptOf(body: string): string {
  const chars = Array.from(body);
  return chars.length <= EXCERPT_CHARS_MAX ? body : chars.slice(0, EXCERPT_CHARS_MAX).join('');
}

/** The kinds of event that change a message in place. */
export type MessageChange = Extract<
  ConversationEvent['kind'],
  'edit' | 'delete' | 'reaction_added' | 'reaction_removed'
>;

export interface TargetedChange {
  kind: MessageChange;
  target_seq: number;
  body?: string;
  mentions?: UserId[];
  emoji?: string;
}

/** `change` (by `actor`, at `at`) applied to `message`, its target. */
export function applyToMessage(message: Message, change: TargetedChange, actor: UserId, at: string): Message {
  switch (change.kind) {
    case 'edit': {
      if (message.deleted) return message;
      const next: Message = { ...message, body: change.body ?? '', edited_at: at };
      if (change.mentions && change.mentions.length > 0) next.mentions = change.mentions;
      else delete next.mentions;
      return next;
    }
    case 'delete': {
      if (message.deleted) return message;
      const next: Message = { ...message, body: '', deleted: true };
      delete next.reactions;
      delete next.mentions;
      delete next.files;
      return next;
    }
    case 'reaction_added':
    case 'reaction_removed':
      return withReaction(message, change.emoji ?? '', actor, change.kind === 'reaction_added');
  }
}

function withReaction(message: Message, emoji: string, user: UserId, add: boolean): Message {
  if (message.deleted) return message;
  const reactions = message.reactions ?? [];
  const existing = reactions.find((r) => r.emoji === emoji);
  if (add ? existing?.user_ids.includes(user) : !existing?.user_ids.includes(user)) return message;
  let next = reactions.map((r) =>
    r.emoji !== emoji ? r : { emoji, user_ids: add ? [...r.user_ids, user] : r.user_ids.filter((u) => u !== user) },
  );
  if (add && !existing) next = [...next, { emoji, user_ids: [user] }];
  next = next.filter((r) => r.user_ids.length > 0);
  const updated: Message = { ...message, reactions: next };
  if (next.length === 0) delete updated.reactions;
  return updated;
}

/** A reply's quote of the message at `target` after that message was edited or deleted. */
export function requote(reply: Message, target: Message): Message {
  const quote = reply.reply_to;
  if (!quote || quote.seq !== target.seq) return reply;
  const excerpt = target.deleted ? '' : excerptOf(target.body);
  if (quote.excerpt === excerpt && Boolean(quote.deleted) === Boolean(target.deleted)) return reply;
  return { ...reply, reply_to: target.deleted ? { ...quote, excerpt, deleted: true } : { ...quote, excerpt } };
}

/** A conversation row after a member or title event; the same row if nothing changed. */
export function applyToConversation(conversation: Conversation, event: ConversationEvent): Conversation {
  switch (event.kind) {
    case 'member_added': {
      if (conversation.members.some((m) => m.id === event.user.id)) return conversation;
      // A new member starts with everything before their joining marked read.
      const member: ConversationMember = {
        id: event.user.id,
        username: event.user.username,
        online: false,
        last_seen: null,
        role: event.role,
        last_delivered_seq: event.seq,
        last_read_seq: event.seq,
      };
      const members = [...conversation.members, member].sort((a, b) => a.username.localeCompare(b.username));
      return { ...conversation, members };
    }
    case 'member_removed':
    case 'member_left': {
      const promoted = event.promoted_user_id;
      if (!conversation.members.some((m) => m.id === event.user_id || (m.id === promoted && m.role !== 'admin'))) {
        return conversation;
      }
      const members = conversation.members
        .filter((m) => m.id !== event.user_id)
        .map((m) => (m.id === promoted ? { ...m, role: 'admin' as const } : m));
      return { ...conversation, members };
    }
    case 'role_changed': {
      if (!conversation.members.some((m) => m.id === event.user_id && m.role !== event.role)) return conversation;
      const members = conversation.members.map((m) => (m.id === event.user_id ? { ...m, role: event.role } : m));
      return { ...conversation, members };
    }
    case 'title_changed':
      return conversation.title === event.title ? conversation : { ...conversation, title: event.title };
    default:
      return conversation;
  }
}

/** Moves a member's read or delivered marker forward (never back); reading implies delivery. */
export function withMarker(
  conversation: Conversation,
  user: UserId,
  marker: 'read' | 'delivered',
  seq: number,
): Conversation {
  const member = conversation.members.find((m) => m.id === user);
  if (!member) return conversation;
  const read = marker === 'read' ? Math.max(member.last_read_seq, seq) : member.last_read_seq;
  const delivered = Math.max(member.last_delivered_seq, read, marker === 'delivered' ? seq : 0);
  if (read === member.last_read_seq && delivered === member.last_delivered_seq) return conversation;
  const members = conversation.members.map((m) =>
    m.id === user ? { ...m, last_read_seq: read, last_delivered_seq: delivered } : m,
  );
  return { ...conversation, members };
}
