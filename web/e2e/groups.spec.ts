import { expect, test } from '@playwright/test';

import { chatItem, chatList, directChat, groupChat, messages, messageWith, openChat, openChatInfo, person, send, uniqueName } from './helpers.ts';

test('@-mentions: autocomplete, highlight, the @ badge', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const title = `Mentions ${Date.now().toString(36)}`;
  await groupChat(ben, title, [ada]);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ben.page, title);

  const box = ben.page.getByRole('textbox', { name: 'Message' });
  await box.pressSequentially(`look @${ada.username.slice(0, 3)}`);
  const options = ben.page.getByRole('listbox', { name: 'People to mention' });
  await expect(options.getByRole('option', { name: `@${ada.username}` })).toHaveAttribute('aria-selected', 'true');
  await box.press('Enter');
  await expect(box).toHaveValue(`look @${ada.username} `);
  await box.pressSequentially('here');
  await box.press('Enter');
  await expect(messageWith(ben.page, 'here')).toContainText(/Sent|Delivered|Seen/);

  await expect(chatItem(ada.page, title).getByLabel('1 unread mention')).toBeVisible();
  await openChat(ada.page, title);
  const mention = messageWith(ada.page, 'here').locator('.mention.is-me');
  await expect(mention).toHaveText(`@${ada.username}`);
  await expect(chatItem(ada.page, title).getByLabel(/unread/)).toHaveCount(0);
  await ada.context.close();
  await ben.context.close();
});

test('a group admin renames, adds, removes and promotes; members leave; lists follow live', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const cy = await person(browser, baseURL, uniqueName('cy'));
  const title = `Crew ${Date.now().toString(36)}`;
  await groupChat(ada, title, [ben]);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ada.page, title);
  await send(ada.page, 'welcome');

  // An admin may delete anyone's message in a group (after a confirm that names them).
  await openChat(ben.page, title);
  await send(ben.page, 'an unfortunate message');
  const theirs = messageWith(ada.page, 'an unfortunate message');
  await theirs.hover();
  await theirs.getByRole('button', { name: 'More actions' }).click();
  await ada.page.getByRole('menu', { name: 'Message actions' }).getByRole('menuitem', { name: 'Delete' }).click();
  const confirmDelete = ada.page.getByRole('dialog', { name: 'Delete message?' });
  await expect(confirmDelete).toContainText(`from ${ben.username}`);
  await confirmDelete.getByRole('button', { name: 'Delete' }).click();
  await expect(messages(ben.page).nth(1)).toContainText('This message was deleted');

  // Rename.
  let info = await openChatInfo(ada.page);
  await info.getByRole('button', { name: 'Rename' }).click();
  const renamed = `${title} 2`;
  await info.getByLabel('Group title').fill(renamed);
  await info.getByRole('button', { name: 'Save' }).click();
  await expect(ada.page.getByRole('heading', { name: renamed, exact: true })).toBeVisible();
  await expect(chatItem(ben.page, renamed)).toBeVisible();
  await expect(messages(ada.page).filter({ hasText: `You renamed the group to “${renamed}”` })).toBeVisible();

  // Add Cy by searching; Cy's list gets the group without a reload.
  await info.getByLabel('Search users').fill(cy.username);
  await info.getByRole('button', { name: `Add ${cy.username}` }).click();
  await expect(info.getByRole('listitem', { name: cy.username })).toBeVisible();
  await expect(chatItem(cy.page, renamed)).toBeVisible();
  await expect(messages(ada.page).filter({ hasText: `You added ${cy.username}` })).toBeVisible();

  // Make Ben an admin: he can rename now.
  await info.getByRole('button', { name: `Make ${ben.username} an admin` }).click();
  await expect(info.getByRole('listitem', { name: ben.username })).toContainText('Admin');
  await openChat(ben.page, renamed);
  const benInfo = await openChatInfo(ben.page);
  await expect(benInfo.getByRole('button', { name: 'Rename' })).toBeVisible();
  await ben.page.keyboard.press('Escape');

  // Remove Cy: the group leaves Cy's list live.
  await openChat(cy.page, renamed);
  await info.getByRole('button', { name: `Remove ${cy.username}` }).click();
  await ada.page.getByRole('dialog', { name: `Remove ${cy.username}?` }).getByRole('button', { name: 'Remove' }).click();
  await expect(info.getByRole('listitem', { name: cy.username })).toHaveCount(0);
  await expect(chatItem(cy.page, renamed)).toHaveCount(0);
  await expect(cy.page.getByRole('heading', { name: renamed, exact: true })).toHaveCount(0);
  await expect(cy.page.getByText(`removed you from ${renamed}`)).toBeVisible();
  await ada.page.keyboard.press('Escape');
  await expect(ada.page.getByRole('dialog')).toHaveCount(0);
  // Focus returns to where it was before the dialog.
  await expect(ada.page.getByRole('button', { name: 'Chat info', exact: true })).toBeFocused();

  // Ben leaves (after a confirm).
  info = await openChatInfo(ben.page);
  await info.getByRole('button', { name: 'Leave group' }).click();
  await ben.page.getByRole('dialog', { name: 'Leave group?' }).getByRole('button', { name: 'Leave' }).click();
  await expect(chatItem(ben.page, renamed)).toHaveCount(0);
  await expect(messages(ada.page).filter({ hasText: `${ben.username} left` })).toBeVisible();
  await expect(chatList(ada.page)).toBeVisible();
  for (const p of [ada, ben, cy]) await p.context.close();
});

test('mute is a switch in the chat info, for direct chats too', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await openChat(ada.page, ben.username);
  const info = await openChatInfo(ada.page);
  const mute = info.getByRole('switch', { name: 'Mute notifications' });
  await expect(mute).not.toBeChecked();
  await mute.check();
  await expect(info.getByText('Only mentions of you notify you.')).toBeVisible();
  await ada.page.keyboard.press('Escape');
  await expect(chatItem(ada.page, ben.username).getByText('muted')).toBeAttached();
  await ada.page.reload();
  await expect(chatItem(ada.page, ben.username).getByText('muted')).toBeAttached();
  await ada.context.close();
  await ben.context.close();
});

test('receipts: sent, delivered, seen; "Seen by" in a group, kept across a reload', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const cy = await person(browser, baseURL, uniqueName('cy'));
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ada.page, ben.username);
  await send(ada.page, 'did you get this?');
  // Ben's list is open, not the chat: delivered, not seen.
  await expect(messageWith(ada.page, 'did you get this?').getByText('Delivered', { exact: true })).toBeVisible();
  await openChat(ben.page, ada.username);
  await expect(messageWith(ada.page, 'did you get this?').getByText('Seen', { exact: true })).toBeVisible();
  await ada.page.reload();
  await expect(messageWith(ada.page, 'did you get this?').getByText('Seen', { exact: true })).toBeVisible();

  const title = `Receipts ${Date.now().toString(36)}`;
  await groupChat(ada, title, [ben, cy]);
  await ada.page.reload();
  await ben.page.reload();
  await cy.page.reload();
  await openChat(ada.page, title);
  await send(ada.page, 'group news');
  await openChat(ben.page, title);
  const news = messageWith(ada.page, 'group news');
  await expect(news).toContainText(`Seen by ${ben.username}`);
  await expect(news.locator('.delivery')).toContainText(`Delivered. Seen by ${ben.username}. Delivered to ${cy.username}`);
  await openChat(cy.page, title);
  await expect(news.locator('.delivery')).toContainText(/Seen\. Seen by .*, /);
  await ada.page.reload();
  await expect(messageWith(ada.page, 'group news')).toContainText(/Seen by .*, .*/);
  for (const p of [ada, ben, cy]) await p.context.close();
});
