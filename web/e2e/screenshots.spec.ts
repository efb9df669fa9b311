import { expect, test } from '@playwright/test';

import { chatItem, directChat, groupChat, messages, messageWith, openChat, openChatInfo, person, postEvent, screenshot, send, seqOf } from './helpers.ts';

// The pictures for the README: the main screens on a desktop and at phone width, light
// and dark. The names are fixed so the pictures read well; the data directory is fresh.

test('screenshots of the main screens', async ({ browser, baseURL }) => {
  const maria = await person(browser, baseURL, 'maria', { viewport: { width: 1280, height: 800 } });
  const jonas = await person(browser, baseURL, 'jonas');
  const priya = await person(browser, baseURL, 'priya');
  const dm = await directChat(maria, jonas);
  const group = await groupChat(priya, 'Design review', [maria, jonas]);
  await directChat(priya, maria);

  await jonas.page.reload();
  await priya.page.reload();
  await openChat(priya.page, 'Design review');
  await send(priya.page, 'Mockups for the new onboarding are up: https://example.com/onboarding');
  await openChat(jonas.page, 'maria');
  await send(jonas.page, 'Hey Maria! Are we still on for Thursday?');
  await send(jonas.page, 'I booked the small room, 2 pm.\nBringing the printouts.');

  await maria.page.reload();
  await expect(chatItem(maria.page, 'jonas').getByLabel('2 unread')).toBeVisible();
  await expect(chatItem(maria.page, 'Design review').getByLabel('1 unread')).toBeVisible();
  await screenshot(maria.page, 'chat-list');
  await openChat(maria.page, 'jonas');
  await expect(messages(maria.page)).toHaveCount(2);
  await send(maria.page, 'Yes, Thursday works. See you there.');
  await expect(messages(jonas.page)).toHaveCount(3);
  await jonas.page.getByRole('textbox', { name: 'Message' }).pressSequentially('Perfect');
  await expect(maria.page.getByText('jonas is typing…')).toBeVisible();
  await screenshot(maria.page, 'conversation');

  // Replies, reactions, an edit, a mention and receipts.
  await jonas.page.getByRole('textbox', { name: 'Message' }).fill('');
  const thursday = await seqOf(jonas, dm, 'Yes, Thursday works. See you there.');
  await postEvent(jonas, dm, { kind: 'reaction_added', target_seq: thursday, emoji: '🎉' }, 'shot-react-1');
  await postEvent(maria, dm, { kind: 'reaction_added', target_seq: thursday, emoji: '🎉' }, 'shot-react-2');
  await postEvent(jonas, dm, { kind: 'reaction_added', target_seq: thursday, emoji: '👍' }, 'shot-react-3');
  const room = await seqOf(jonas, dm, 'I booked the small room, 2 pm.\nBringing the printouts.');
  await postEvent(maria, dm, { kind: 'message', body: 'Could you print the **v2** flow too?', reply_to_seq: room }, 'shot-reply');
  await expect(messageWith(jonas.page, 'v2')).toBeVisible();
  await postEvent(jonas, dm, { kind: 'message', body: 'Sure, _will do_. @maria does the room have a projector?' }, 'shot-mention');
  await expect(messageWith(maria.page, 'does the room have')).toBeVisible();
  const projector = await seqOf(jonas, dm, 'Sure, _will do_. @maria does the room have a projector?');
  await postEvent(jonas, dm, { kind: 'edit', target_seq: projector, body: 'Sure, _will do_. @maria does the room have a `HDMI` projector?' }, 'shot-edit');
  await expect(messageWith(maria.page, 'HDMI')).toContainText('edited');
  await send(maria.page, 'It does. See you there!');
  await expect(messageWith(maria.page, 'It does. See you there!').getByText('Seen', { exact: true })).toBeVisible();
  await screenshot(maria.page, 'conversation-events');

  await maria.page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(maria.page, 'conversation-dark');
  await maria.page.emulateMedia({ colorScheme: 'light' });

  // The group: a system line, "Seen by", the chat info.
  await postEvent(priya, group, { kind: 'title_changed', title: 'Design review 🎨' }, 'shot-rename');
  await postEvent(priya, group, { kind: 'role_changed', user_id: maria.id, role: 'admin' }, 'shot-admin');
  await openChat(maria.page, 'Design review 🎨');
  await send(maria.page, 'Two comments inline, otherwise ready to ship.');
  await openChat(priya.page, 'Design review 🎨');
  await openChat(jonas.page, 'Design review 🎨');
  await expect(messageWith(maria.page, 'Two comments inline')).toContainText('Seen by');
  await screenshot(maria.page, 'group');
  await openChatInfo(maria.page);
  await screenshot(maria.page, 'group-panel');
  await maria.page.keyboard.press('Escape');

  const phone = await browser.newContext({ baseURL, viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await phone.addCookies(await maria.context.cookies());
  const page = await phone.newPage();
  await page.goto('/');
  await expect(chatItem(page, 'Design review 🎨')).toBeVisible();
  await screenshot(page, 'phone-chat-list');
  await openChat(page, 'jonas');
  await expect(messages(page)).toHaveCount(6);
  await expect(page.getByRole('link', { name: 'Back to chats' })).toBeVisible();
  await screenshot(page, 'phone-conversation');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'phone-conversation-dark');
  await page.getByRole('link', { name: 'Back to chats' }).click();
  await expect(chatItem(page, 'jonas')).toBeVisible();
  await openChat(page, 'Design review 🎨');
  await openChatInfo(page);
  await screenshot(page, 'phone-group-panel-dark');
  await page.keyboard.press('Escape');
  await page.emulateMedia({ colorScheme: 'light' });

  for (const context of [maria.context, jonas.context, priya.context, phone]) await context.close();
});
