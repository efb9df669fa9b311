import { expect, test } from '@playwright/test';

import { chatItem, directChat, messages, openChat, person, send, uniqueName } from './helpers.ts';

test('two people chat live, both ways', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));

  // Ada finds Ben by name and starts the chat from the UI.
  await ada.page.getByRole('button', { name: 'New chat' }).click();
  await ada.page.getByLabel('Search users').fill(ben.username.slice(0, 6));
  await ada.page.getByRole('button', { name: ben.username }).click();
  await expect(ada.page.getByRole('heading', { name: ben.username, exact: true })).toBeVisible();

  // Enter sends; Shift+Enter makes a new line.
  const box = ada.page.getByRole('textbox', { name: 'Message' });
  await box.fill('Hello Ben!');
  await box.press('Shift+Enter');
  await box.pressSequentially('Second line.');
  await box.press('Enter');
  await expect(box).toHaveValue('');
  const first = messages(ada.page).filter({ hasText: 'Hello Ben!' });
  await expect(first).toContainText('Second line.');
  await expect(first).toContainText(/Sent|Delivered|Seen/);

  // Ben never reloads: the chat appears, with the message, live.
  await expect(chatItem(ben.page, ada.username)).toContainText('Hello Ben!');
  await openChat(ben.page, ada.username);
  await expect(messages(ben.page)).toHaveCount(1);
  await expect(messages(ben.page).first()).toContainText('Second line.');

  await ben.page.getByRole('textbox', { name: 'Message' }).fill('Hi Ada, got it.');
  await ben.page.getByRole('button', { name: 'Send' }).click();
  await expect(messages(ada.page).filter({ hasText: 'Hi Ada, got it.' })).toHaveCount(1);
  await send(ada.page, 'Great, talk soon');
  await expect(messages(ben.page)).toHaveCount(3);
  await expect(messages(ben.page).nth(2)).toContainText('Great, talk soon');
  await expect(messages(ada.page)).toHaveCount(3);

  await ada.context.close();
  await ben.context.close();
});

test('a typing indicator shows while the other person types', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();
  await openChat(ada.page, ben.username);
  await openChat(ben.page, ada.username);
  await ben.page.getByRole('textbox', { name: 'Message' }).pressSequentially('I am typ');
  await expect(ada.page.getByText(`${ben.username} is typing…`)).toBeVisible();
  await ada.context.close();
  await ben.context.close();
});

test('the unread badge appears for new messages and clears when the chat is read', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await ben.page.reload();

  await openChat(ada.page, ben.username);
  await send(ada.page, 'one');
  await expect(chatItem(ben.page, ada.username).getByLabel('1 unread')).toBeVisible();
  await send(ada.page, 'two');
  await expect(chatItem(ben.page, ada.username).getByLabel('2 unread')).toBeVisible();

  await openChat(ben.page, ada.username);
  await expect(messages(ben.page)).toHaveCount(2);
  await expect(chatItem(ben.page, ada.username).getByLabel(/unread/)).toHaveCount(0);
  // Read on the server too: it survives a reload.
  await ben.page.goto('/');
  await expect(chatItem(ben.page, ada.username)).toContainText('two');
  await expect(chatItem(ben.page, ada.username).getByLabel(/unread/)).toHaveCount(0);

  await ada.context.close();
  await ben.context.close();
});

test('the presence dot goes online and offline', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const benName = uniqueName('ben');
  const ben = await person(browser, baseURL, benName);
  await directChat(ada, ben);
  await ada.page.reload();
  await expect(chatItem(ada.page, benName).getByRole('img', { name: 'online', exact: true })).toBeVisible();

  await ben.context.close();
  await expect(chatItem(ada.page, benName).getByRole('img', { name: 'offline', exact: true })).toBeVisible({
    timeout: 35_000,
  });

  const benAgain = await browser.newContext({ baseURL });
  const login = await benAgain.request.post('/api/v1/auth/login', {
    data: { username: benName, password: 'correct horse battery' },
    headers: { 'X-Parlor-CSRF': '1' },
  });
  expect(login.ok()).toBe(true);
  const page = await benAgain.newPage();
  await page.goto('/');
  await expect(chatItem(ada.page, benName).getByRole('img', { name: 'online', exact: true })).toBeVisible();

  await openChat(ada.page, benName);
  await expect(ada.page.getByRole('main').getByText('online', { exact: true })).toBeVisible();
  await ada.context.close();
  await benAgain.close();
});

test('a group is created with a title and members, and everyone gets its messages', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  const cy = await person(browser, baseURL, uniqueName('cy'));
  const title = `Lunch ${Date.now().toString(36)}`;

  await ada.page.getByRole('button', { name: 'New group' }).click();
  await ada.page.getByLabel('Group title').fill(title);
  await ada.page.getByLabel('Search users').fill(ben.username);
  await ada.page.getByRole('checkbox', { name: ben.username }).check();
  await ada.page.getByLabel('Search users').fill(cy.username);
  await ada.page.getByRole('checkbox', { name: cy.username }).check();
  await ada.page.getByRole('button', { name: 'Create group' }).click();
  await expect(ada.page.getByRole('heading', { name: title, exact: true })).toBeVisible();
  await send(ada.page, 'Noodles at noon?');

  for (const member of [ben, cy]) {
    await expect(chatItem(member.page, title)).toContainText('Noodles at noon?');
    await openChat(member.page, title);
    await expect(messages(member.page)).toHaveCount(1);
  }
  await send(cy.page, 'Yes!');
  await expect(messages(ben.page).nth(1)).toContainText('Yes!');
  await expect(messages(ada.page).nth(1)).toContainText('Yes!');

  await ada.context.close();
  await ben.context.close();
  await cy.context.close();
});

test('the app works with the keyboard alone', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  const link = chatItem(ada.page, ben.username).getByRole('link');
  await link.focus();
  await ada.page.keyboard.press('Enter');
  await expect(ada.page.getByRole('heading', { name: ben.username, exact: true })).toBeVisible();
  await ada.page.getByRole('textbox', { name: 'Message' }).focus();
  await ada.page.keyboard.type('typed without a mouse');
  await ada.page.keyboard.press('Enter');
  await expect(messages(ada.page).first()).toContainText(/Sent|Delivered|Seen/);

  await ada.page.getByRole('button', { name: 'New chat' }).focus();
  await ada.page.keyboard.press('Enter');
  await expect(ada.page.getByRole('dialog', { name: 'New chat' })).toBeVisible();
  await expect(ada.page.getByLabel('Search users')).toBeFocused();
  await ada.page.keyboard.press('Escape');
  await expect(ada.page.getByRole('dialog')).toHaveCount(0);
  await ada.context.close();
  await ben.context.close();
});
