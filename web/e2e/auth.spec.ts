import { expect, test } from '@playwright/test';

import { PASSWORD, chatItem, directChat, messages, openChat, person, screenshot, send, uniqueName } from './helpers.ts';

test('a person creates an account, logs out and logs in again with the form', async ({ page }) => {
  const username = uniqueName('ada');
  await page.goto('/');
  await expect(page.getByRole('button', { name: 'Log in' })).toBeVisible();
  await screenshot(page, 'login');

  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.getByRole('button', { name: 'Log out' })).toBeVisible();
  await expect(page.getByText(username, { exact: true })).toBeVisible();

  await page.getByRole('button', { name: 'Log out' }).click();
  await expect(page.getByRole('button', { name: 'Log in' })).toBeVisible();
  // The cookie is gone: a reload stays logged out.
  await page.reload();
  await expect(page.getByRole('button', { name: 'Log in' })).toBeVisible();

  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByLabel('Password').press('Enter');
  await expect(page.getByRole('button', { name: 'Log out' })).toBeVisible();
});

test('a wrong password and a taken name are explained', async ({ page, request }) => {
  const username = uniqueName('taken');
  const created = await request.post('/api/v1/auth/register', { data: { username, password: PASSWORD } });
  expect(created.status()).toBe(201);

  await page.goto('/');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('alert')).not.toBeEmpty();
  await expect(page.getByRole('button', { name: 'Log out' })).toHaveCount(0);

  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.getByRole('alert')).not.toBeEmpty();
  await expect(page.getByRole('button', { name: 'Log out' })).toHaveCount(0);

  await page.getByLabel('Username').fill('no');
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.getByRole('alert')).toContainText('3 to 32');
});

test('the session cookie is HttpOnly, nothing is kept in web storage, and CSRF is refused', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const cookies = await ada.context.cookies();
  const session = cookies.find((c) => c.name === 'parlor_session');
  expect(session?.httpOnly).toBe(true);
  expect(session?.sameSite).toBe('Strict');
  const storage = await ada.page.evaluate(() => localStorage.length + sessionStorage.length);
  expect(storage).toBe(0);
  expect(await ada.page.evaluate(() => document.cookie)).not.toContain('parlor_session');

  // A cookie-authenticated change without the CSRF header is refused, and changes nothing.
  const forged = await ada.context.request.post('/api/v1/auth/logout');
  expect(forged.status()).toBe(403);
  await ada.page.reload();
  await expect(ada.page.getByRole('button', { name: 'Log out' })).toBeVisible();
  await ada.context.close();
});

test('a reload keeps the session, the open conversation and its history', async ({ browser, baseURL }) => {
  const ada = await person(browser, baseURL, uniqueName('ada'));
  const ben = await person(browser, baseURL, uniqueName('ben'));
  await directChat(ada, ben);
  await ada.page.reload();
  await openChat(ada.page, ben.username);
  await send(ada.page, 'first, before the reload');
  await send(ada.page, 'second, before the reload');

  await ada.page.reload();
  await expect(ada.page.getByRole('heading', { name: ben.username, exact: true })).toBeVisible();
  await expect(messages(ada.page)).toHaveCount(2);
  await expect(messages(ada.page).nth(0)).toContainText('first, before the reload');
  await expect(messages(ada.page).nth(1)).toContainText('second, before the reload');
  await expect(chatItem(ada.page, ben.username)).toContainText('second, before the reload');
  await ada.context.close();
  await ben.context.close();
});
