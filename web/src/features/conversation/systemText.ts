// The words of a system line: what a member, role or title event did, named as people
// read it ("Ann added Ben", "You left").

import type { ConversationEvent, UserId } from '../../lib/api/types.ts';

export function systemText(event: ConversationEvent, meId: UserId, names: Readonly<Record<UserId, string>>): string {
  const name = (id: UserId, capital = true) => (id === meId ? (capital ? 'You' : 'you') : (names[id] ?? (capital ? 'A former member' : 'a former member')));
  const by = name(event.sender_id);
  const promoted = (id: UserId | undefined) => (id ? ` ${name(id)} ${id === meId ? 'are' : 'is'} now an admin.` : '');
  switch (event.kind) {
    case 'member_added':
      return event.user.id === event.sender_id ? `${by} joined` : `${by} added ${event.user.id === meId ? 'you' : event.user.username}`;
    case 'member_removed':
      return `${by} removed ${name(event.user_id, false)}.${promoted(event.promoted_user_id)}`;
    case 'member_left':
      return `${name(event.user_id)} left.${promoted(event.promoted_user_id)}`;
    case 'title_changed':
      return `${by} renamed the group to “${event.title}”`;
    case 'role_changed':
      return event.role === 'admin'
        ? `${by} made ${name(event.user_id, false)} an admin`
        : `${by} made ${name(event.user_id, false)} a member (no longer an admin)`;
    default:
      return '';
  }
}
