import { expect, test } from '@playwright/test';

import {
  chatItem,
  directChat,
  messageMenu,
  messages,
  messageWith,
  openChat,
  person,
  postEvent,
  postMessages,
  send,
  uniqueName,
} from './helpers.ts';

test('a reply quotes its original, and the quote jumps to it, loading history', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const id = await directChat(ada, ben);
  await postMessages(ben, id, ['the original question'], 'orig');
  await postMessages(ben, id, Array.from({ length: 70 }, (_, i) => `filler ${i + 1}`), 'filler');
  await postEvent(ada, id, { kind: 'message', body: 'the answer, far below', reply_to_seq: 1 }, 'reply-1');

  await ada.page.reload();
  await openChat(ada.page, ben.username);
  const reply = messageWith(ada.page, 'the answer, far below');
  const quote = reply.getByRole('button', { name: /Reply to .*the original question/ });
  await expect(quote).toBeVisible();
  // The reply's quote holds the words too: the original is the one that is not the reply.
  const original = messageWith(ada.page, 'the original question').filter({ hasNotText: 'far below' });
  await expect(original).toHaveCount(0);
  await quote.click();
  await expect(original).toBeInViewport();
  await expect(original).toHaveClass(/is-highlighted/);
  await expect(original).toBeFocused();

  // Replying from the UI: the preview above the box, Escape cancels, the sent reply quotes.
  await original.hover();
  await original.getByRole('button', { name: 'Reply', exact: true }).click();
  await expect(ada.page.getByText(`Replying to ${ben.username}`)).toBeVisible();
  const box = ada.page.getByRole('textbox', { name: 'Message' });
  await expect(box).toBeFocused();
  await box.press('Escape');
  await expect(ada.page.getByText(`Replying to ${ben.username}`)).toHaveCount(0);
  await messageWith(ada.page, 'filler 70').hover();
  await messageWith(ada.page, 'filler 70').getByRole('button', { name: 'Reply', exact: true }).click();
  await send(ada.page, 'about the last filler');
  await expect(messageWith(ada.page, 'about the last filler').getByRole('button', { name: /Reply to .*filler 70/ })).toBeVisible();

  await openChat(ben.page, ada.username);
  await expect(messageWith(ben.page, 'about the last filler').getByRole('button', { name: /Reply to You: filler 70/ })).toBeVisible();
  await ada.context.close();
  await ben.context.close();
});

test('reactions: pick one from the keyboard, see who reacted, take it back', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ada.page, ben.username);
  await openChat(ben.page, ada.username);
  await send(ada.page, 'react to this');

  const theirs = messageWith(ben.page, 'react to this');
  await theirs.hover();
  await theirs.getByRole('button', { name: 'Add reaction' }).first().click();
  const picker = ben.page.getByRole('dialog', { name: 'Pick a reaction' });
  await expect(picker.getByRole('button', { name: 'thumbs up', exact: true })).toBeFocused();
  await ben.page.keyboard.press('ArrowRight');
  await expect(picker.getByRole('button', { name: 'heart', exact: true })).toBeFocused();
  await ben.page.keyboard.press('Enter');
  await expect(picker).toHaveCount(0);
  const benHeart = theirs.getByRole('button', { name: /^heart: 1 \(you\)/ });
  await expect(benHeart).toHaveAttribute('aria-pressed', 'true');

  const mine = messageWith(ada.page, 'react to this');
  const adaHeart = mine.getByRole('button', { name: `heart: 1 (${ben.username})` });
  await expect(adaHeart).toHaveAttribute('aria-pressed', 'false');
  await adaHeart.click();
  await expect(mine.getByRole('button', { name: new RegExp(`^heart: 2 \\(${ben.username}, you\\)`) })).toBeVisible();
  await expect(theirs.getByRole('button', { name: /^heart: 2/ })).toBeVisible();

  await theirs.getByRole('button', { name: /^heart: 2/ }).click();
  await expect(mine.getByRole('button', { name: /^heart: 1 \(you\)/ })).toBeVisible();
  await mine.getByRole('button', { name: /^heart: 1 \(you\)/ }).click();
  await expect(mine.getByRole('button', { name: /^heart/ })).toHaveCount(0);
  await expect(theirs.getByRole('button', { name: /^heart/ })).toHaveCount(0);
  await ada.context.close();
  await ben.context.close();
});

test('edit from the menu and with ArrowUp, delete with a confirm', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ada.page, ben.username);
  await openChat(ben.page, ada.username);
  await send(ada.page, 'helo wrold');
  await send(ada.page, 'second thougt');

  const menu = await messageMenu(ada.page, 'helo wrold');
  await expect(menu.getByRole('menuitem', { name: 'Reply' })).toBeFocused();
  await ada.page.keyboard.press('ArrowDown');
  await ada.page.keyboard.press('ArrowDown');
  await expect(menu.getByRole('menuitem', { name: 'Edit' })).toBeFocused();
  await ada.page.keyboard.press('Enter');
  const box = ada.page.getByRole('textbox', { name: 'Message' });
  await expect(box).toHaveValue('helo wrold');
  await expect(ada.page.getByText('Editing message')).toBeVisible();
  await box.fill('hello world');
  await box.press('Enter');
  await expect(messageWith(ada.page, 'hello world')).toContainText('edited');
  await expect(messageWith(ben.page, 'hello world')).toContainText('edited');
  await expect(box).toHaveValue('');

  // ArrowUp in the empty box edits my last message; Escape gives up.
  await box.press('ArrowUp');
  await expect(box).toHaveValue('second thougt');
  await box.press('Escape');
  await expect(box).toHaveValue('');
  await box.press('ArrowUp');
  await box.fill('second thought');
  await box.press('Enter');
  await expect(messageWith(ben.page, 'second thought')).toContainText('edited');

  // Only my own messages can be edited.
  const theirMenu = await messageMenu(ben.page, 'second thought');
  await expect(theirMenu.getByRole('menuitem', { name: 'Edit' })).toHaveCount(0);
  await expect(theirMenu.getByRole('menuitem', { name: 'Delete' })).toHaveCount(0);
  await ben.page.keyboard.press('Escape');
  await expect(theirMenu).toHaveCount(0);

  const deleteMenu = await messageMenu(ada.page, 'hello world');
  await deleteMenu.getByRole('menuitem', { name: 'Delete' }).click();
  const confirm = ada.page.getByRole('dialog', { name: 'Delete message?' });
  await expect(confirm.getByRole('button', { name: 'Cancel' })).toBeFocused();
  await confirm.getByRole('button', { name: 'Delete' }).click();
  await expect(messages(ada.page).first()).toContainText('This message was deleted');
  await expect(messages(ben.page).first()).toContainText('This message was deleted');
  await expect(messages(ben.page).first()).not.toContainText('hello world');
  await ada.context.close();
  await ben.context.close();
});

test('markdown renders as elements, links stay http(s) only', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await openChat(ada.page, ben.username);
  const box = ada.page.getByRole('textbox', { name: 'Message' });
  await box.fill('**bold** _italic_ ~~gone~~ `x = 1`');
  await box.press('Shift+Enter');
  await box.pressSequentially('> quoted line');
  await box.press('Shift+Enter');
  await box.pressSequentially('see https://example.com/a_b_c');
  await box.press('Enter');

  await ben.page.reload();
  await openChat(ben.page, ada.username);
  const message = messages(ben.page).first();
  await expect(message.locator('strong')).toHaveText('bold');
  await expect(message.locator('em')).toHaveText('italic');
  await expect(message.locator('s')).toHaveText('gone');
  await expect(message.locator('code')).toHaveText('x = 1');
  await expect(message.locator('blockquote')).toHaveText('quoted line');
  await expect(message.getByRole('link', { name: 'https://example.com/a_b_c' })).toHaveAttribute('href', 'https://example.com/a_b_c');
  await ada.context.close();
  await ben.context.close();
});

test('a draft stays with its chat across switches and reloads', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const cy = await person(browser, baseURL, uniqueName('cy'));
  await directChat(ada, ben);
  await directChat(ada, cy);
  await ada.page.reload();
  await openChat(ada.page, ben.username);
  const box = ada.page.getByRole('textbox', { name: 'Message' });
  await expect(box).toBeFocused();
  await box.fill('half-written for ben');
  await openChat(ada.page, cy.username);
  await expect(box).toHaveValue('');
  await box.fill('for cy');
  await openChat(ada.page, ben.username);
  await expect(box).toHaveValue('half-written for ben');
  await ada.page.reload();
  await expect(ada.page.getByRole('heading', { name: ben.username, exact: true })).toBeVisible();
  await expect(box).toHaveValue('half-written for ben');
  await openChat(ada.page, cy.username);
  await expect(box).toHaveValue('for cy');
  await box.press('Enter');
  await openChat(ada.page, ben.username);
  await openChat(ada.page, cy.username);
  await expect(box).toHaveValue('');
  // Logging out leaves no draft behind in this browser.
  await ada.page.getByRole('button', { name: 'Log out' }).click();
  await expect(ada.page.getByRole('button', { name: 'Log in' })).toBeVisible();
  expect(await ada.page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('parlor.draft.')))).toEqual([]);
  await ada.context.close();
  await ben.context.close();
  await cy.context.close();
});

test('a chat opens at an unread divider, with a way to jump to it', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const id = await directChat(ada, ben);
  await postMessages(ada, id, ['read before'], 'before');
  await ben.page.reload();
  await openChat(ben.page, ada.username);
  await expect(messages(ben.page)).toHaveCount(1);
  await ben.page.goto('/');
  await postMessages(ada, id, Array.from({ length: 40 }, (_, i) => `unread ${i + 1}\nwith a second line`), 'unread');
  await expect(chatItem(ben.page, ada.username).getByLabel('40 unread')).toBeVisible();

  await openChat(ben.page, ada.username);
  const divider = ben.page.getByText('40 unread messages');
  await expect(divider).toBeInViewport();
  await expect(messages(ben.page).filter({ hasText: 'unread 1 with' })).toBeInViewport();
  await ben.page.locator('.messages-scroll').evaluate((el) => {
    el.scrollTop = el.scrollHeight;
  });
  await expect(divider).not.toBeInViewport();
  await ben.page.getByRole('button', { name: 'Jump to first unread' }).click();
  await expect(divider).toBeInViewport();
  await ada.context.close();
  await ben.context.close();
});

test('message actions work from the keyboard alone', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await openChat(ada.page, ben.username);
  await send(ada.page, 'keyboard only');
  const box = ada.page.getByRole('textbox', { name: 'Message' });
  await box.focus();
  // Back from the message box: the newest message's toolbar, "More actions" last.
  await ada.page.keyboard.press('Shift+Tab');
  const more = messageWith(ada.page, 'keyboard only').getByRole('button', { name: 'More actions' });
  await expect(more).toBeFocused();
  await ada.page.keyboard.press('Enter');
  const menu = ada.page.getByRole('menu', { name: 'Message actions' });
  await expect(menu.getByRole('menuitem', { name: 'Reply' })).toBeFocused();
  await ada.page.keyboard.press('Escape');
  await expect(menu).toHaveCount(0);
  await expect(more).toBeFocused();
  await ada.page.keyboard.press('Shift+Tab');
  await ada.page.keyboard.press('Enter'); // Reply
  await expect(ada.page.getByText('Replying to yourself')).toBeVisible();
  await expect(box).toBeFocused();
  await ada.page.keyboard.type('answering myself');
  await ada.page.keyboard.press('Enter');
  await expect(messageWith(ada.page, 'answering myself').getByRole('button', { name: /Reply to You: keyboard only/ })).toBeVisible();
  await ada.context.close();
  await ben.context.close();
});
